// crdcheck: validate custom resources (KEDA, Prometheus Operator) without a cluster.
//
// Usage: node check.mjs NODE_MODULES_DIR < objects.json
//   objects.json: a JSON array of Kubernetes objects (any kinds; others are reported as
//   "unsupported"). Prints a JSON array of {apiVersion, kind, name, status, errors} and
//   exits 1 when any supported object is invalid.
//
// Two checks per object, both from the pinned npm packages in package.json
// (@kubernetes-models/keda, @kubernetes-models/prometheus-operator), which are generated
// from the upstream API types:
//   1. schema: the package's JSON-schema validator (types, enums, required fields);
//   2. unknown fields: every key must be a declared property of its type (the API server
//      rejects unknown fields under strict field validation, kubectl's default; the
//      JSON schemas do not catch them). Properties are read from the packages' .d.ts.
import { readFileSync, existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const MODELS = {
  "keda.sh/v1alpha1": {
    pkg: "@kubernetes-models/keda",
    dir: "keda.sh/v1alpha1",
    kinds: ["ScaledObject", "ScaledJob", "TriggerAuthentication", "ClusterTriggerAuthentication"],
  },
  "monitoring.coreos.com/v1": {
    pkg: "@kubernetes-models/prometheus-operator",
    dir: "monitoring.coreos.com/v1",
    kinds: ["ServiceMonitor", "PodMonitor", "PrometheusRule", "Probe"],
  },
};

const nodeModules = resolve(process.argv[2] ?? "node_modules");
const objects = JSON.parse(readFileSync(0, "utf8"));

// -- .d.ts reading: interface properties and where their types are declared -------------
const dtsCache = new Map();

function parseDts(file) {
  if (dtsCache.has(file)) return dtsCache.get(file);
  const text = readFileSync(file, "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/^import \{ (\w+) \} from "([^"]+)";$/gm)) {
    imports.set(m[1], resolveImport(file, m[2]));
  }
  const props = new Map();
  const start = text.search(/^export interface \w+( extends [\w, ]+)? \{$/m);
  if (start >= 0) {
    const lines = text.slice(start).split("\n").slice(1);
    let depth = 0;
    let current = null;
    for (const line of lines) {
      if (depth === 0) {
        if (line.startsWith("}")) break;
        const m = line.match(/^ {4}"([^"]+)"\??: (.*)$/);
        if (m) current = { name: m[1], type: m[2] };
      } else if (current) {
        current.type += " " + line.trim();
      }
      depth += (line.match(/\{/g) ?? []).length - (line.match(/\}/g) ?? []).length;
      if (depth === 0 && current) {
        props.set(current.name, current.type.replace(/;$/, "").trim());
        current = null;
      }
    }
  }
  const parsed = { imports, props, declared: start >= 0 };
  dtsCache.set(file, parsed);
  return parsed;
}

function resolveImport(fromFile, spec) {
  if (spec.startsWith(".")) return join(dirname(fromFile), spec.replace(/\.js$/, ".d.ts"));
  return join(nodeModules, spec + ".d.ts");
}

// A property type: another declared type (recurse), an array or string-keyed map of one,
// or anything else (a leaf: scalars, unions, free-form maps).
function typeRef(typeExpr, imports) {
  let t = typeExpr.trim();
  let wrap = null;
  let m = t.match(/^Array<(.+)>$/);
  if (m) {
    wrap = "array";
    t = m[1].trim();
  } else if ((m = t.match(/^\{ \[key: string\]: (.+); \}$/))) {
    wrap = "map";
    t = m[1].trim();
  }
  if (/^\w+$/.test(t) && imports.has(t) && existsSync(imports.get(t))) {
    return { wrap, file: imports.get(t) };
  }
  return null;
}

function unknownFields(value, file, path, errors) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return;
  const { imports, props, declared } = parseDts(file);
  if (!declared) return; // a type alias (e.g. Quantity): nothing to check
  for (const [key, child] of Object.entries(value)) {
    const childPath = `${path}.${key}`;
    if (!props.has(key)) {
      errors.push(`${childPath}: unknown field`);
      continue;
    }
    const ref = typeRef(props.get(key), imports);
    if (!ref) continue;
    if (ref.wrap === "array" && Array.isArray(child)) {
      child.forEach((item, i) => unknownFields(item, ref.file, `${childPath}[${i}]`, errors));
    } else if (ref.wrap === "map" && child && typeof child === "object") {
      for (const [k, v] of Object.entries(child)) {
        unknownFields(v, ref.file, `${childPath}.${k}`, errors);
      }
    } else if (ref.wrap === null) {
      unknownFields(child, ref.file, childPath, errors);
    }
  }
}

// -- main --------------------------------------------------------------------------------
const results = [];
let invalid = 0;
for (const obj of objects) {
  const name = obj?.metadata?.name ?? "?";
  const group = MODELS[obj?.apiVersion];
  const result = { apiVersion: obj?.apiVersion, kind: obj?.kind, name, status: "unsupported", errors: [] };
  results.push(result);
  if (!group || !group.kinds.includes(obj.kind)) continue;
  const base = join(nodeModules, group.pkg, group.dir, obj.kind);
  const module = await import(pathToFileURL(base + ".js").href);
  const Model = module[obj.kind];
  try {
    new Model(obj).validate();
  } catch (err) {
    result.errors.push(`schema: ${err.message}`);
  }
  unknownFields(obj, base + ".d.ts", obj.kind, result.errors);
  result.status = result.errors.length ? "invalid" : "valid";
  if (result.errors.length) invalid += 1;
}
process.stdout.write(JSON.stringify(results, null, 2) + "\n");
process.exit(invalid ? 1 : 0);
