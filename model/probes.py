"""Probe messages with a known right answer, scored into every retrain report.

They are the ways a new user found to get past the model, plus the ordinary texts a
fix for them must not start flagging:

- an insult alone, after twenty neutral news sentences (past the old 256-token cut)
  and followed by five or twenty (where pooling over the whole text diluted it);
- the same words split by characters (`s t u p i d`, `s.t.u.p.i.d`);
- ordinary spaced text: initials, acronyms, spelled-out codes;
- short benign chat (`hello`, `yup`, `okie`, `thank you`), which the old model flagged.

Each probe names the label and whether it should be flagged; the report lists the
score, the flag and whether it matched. None of these texts is used for training.
"""

from __future__ import annotations

from dataclasses import dataclass

INSULT = "you are a stupid worthless idiot and everyone hates you"

NEUTRAL_SENTENCES = (
    "The city council met on Tuesday evening to discuss next year's budget.",
    "Officials said repairs to the old bridge should be finished by the end of the summer.",
    "Rain is expected across most of the region tomorrow, with sunshine returning on Friday.",
    "The public library will extend its opening hours during the exam period.",
    "A new bus route will connect the university campus with the train station.",
    "Local farmers reported a good harvest despite the dry weeks in early spring.",
    "The museum opened an exhibition of maps drawn in the seventeenth century.",
    "Schools will close early on Friday for the regional holiday.",
    "The hospital has added twenty beds to its children's ward.",
    "A marathon through the old town is planned for the first Sunday of October.",
    "The water company asked residents to report leaks as soon as they see them.",
    "Traffic on the northern ring road will be diverted during the night works.",
    "The orchestra announced a series of free concerts in the park.",
    "Researchers at the university published a study on urban bird populations.",
    "The airport expects more passengers this summer than in any year before.",
    "A community garden has opened on the site of the former car park.",
    "The chamber of commerce welcomed the opening of three new shops on the high street.",
    "Firefighters held an open day to show children how their equipment works.",
    "The ferry timetable changes next week to add an early morning crossing.",
    "Volunteers collected more than two tonnes of litter from the river banks.",
)


@dataclass(frozen=True)
class Probe:
    name: str
    text: str
    label: str
    flagged: bool  # the right answer


def neutral(count: int) -> str:
    return " ".join(NEUTRAL_SENTENCES[i % len(NEUTRAL_SENTENCES)] for i in range(count))


PROBES: tuple[Probe, ...] = (
    Probe("insult alone", INSULT, "insult", True),
    Probe("insult after 20 neutral sentences", f"{neutral(20)} {INSULT}.", "insult", True),
    Probe("insult followed by 5 neutral sentences", f"{INSULT}. {neutral(5)}", "insult", True),
    Probe("insult followed by 20 neutral sentences", f"{INSULT}. {neutral(20)}", "insult", True),
    Probe("20 neutral sentences", neutral(20), "insult", False),
    Probe("split by spaces", "you are a s t u p i d i d i o t", "insult", True),
    Probe("split by dots", "you are a s.t.u.p.i.d i.d.i.o.t", "insult", True),
    Probe("initials", "J. R. R. Tolkien wrote the book in the 1930s", "insult", False),
    Probe("acronym with spaces", "I grew up in the U S A and moved here in 2010", "insult", False),
    Probe("acronym with dots", "The U.S.A. team won the relay again", "insult", False),
    Probe("spelled-out code", "my booking code is A B C 1 2 3, see you there", "insult", False),
    Probe("spelled-out name", "my name is spelled J O H N, with an h", "insult", False),
    Probe("hello", "hello", "insult", False),
    Probe("yup", "yup", "insult", False),
    Probe("okie", "okie", "insult", False),
    Probe("thank you", "thank you", "insult", False),
)
