# Pinned versions of the deployment validation tools. The Makefile includes this file
# and tests/deploy reads it, so both agree on where each tool lives:
#   $(DEPLOY_TOOLS_DIR)/kustomize-$(KUSTOMIZE_VERSION)/kustomize
#   $(DEPLOY_TOOLS_DIR)/checkov-$(CHECKOV_VERSION)/bin/checkov
#   $(DEPLOY_TOOLS_DIR)/composecheck/composecheck   (deploy/tools/composecheck, go.mod pins compose-go)
#   $(DEPLOY_TOOLS_DIR)/crdcheck/node_modules       (deploy/tools/crdcheck, package-lock.json)
# kubernetes-validate is pinned in pyproject.toml's dev extra (it goes into .venv).
KUSTOMIZE_VERSION := v5.8.1
CHECKOV_VERSION := 3.3.30
