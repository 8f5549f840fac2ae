"""Write real Alpaca-format records as a databricks-dolly-15k-format JSONL file.

databricks-dolly-15k is not available offline; this lets the dolly recipe's tiny profile run on real
instructions. The category is guessed from the instruction (the real file carries its own), so the
per-category numbers of such a run describe the pipeline, not Dolly's data.

    python examples/alpaca_as_dolly.py ../shared/data/llamafactory_alpaca_en_demo/alpaca_en_demo.json out.jsonl
"""

from __future__ import annotations

import json
import re
import sys

RULES = [(r"^(classify|categor|identify whether|is this|which of)", "classification"),
         (r"^summari[sz]e", "summarization"), (r"^(brainstorm|list|suggest|give me|name|come up)", "brainstorming"),
         (r"^(write|compose|create|generate|invent|describe a)", "creative_writing"),
         (r"^(extract|find|rewrite|edit|convert)", "information_extraction")]


def category(instruction: str, context: str) -> str:
    low = instruction.lower()
    return next((c for pat, c in RULES if re.match(pat, low)), None) or ("closed_qa" if context.strip() else "open_qa")


def main(src: str, dst: str) -> None:
    recs = json.loads(open(src).read())
    with open(dst, "w") as f:
        for r in recs:
            f.write(json.dumps({"instruction": r["instruction"], "context": r.get("input", ""),
                                "response": r["output"], "category": category(r["instruction"], r.get("input", ""))})
                    + "\n")
    print(f"{len(recs)} records -> {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
