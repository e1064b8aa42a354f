"""Writes N JSONL records of about 200 bytes for the ingest benchmark, deterministically."""

import json
import random
import sys

WORDS = ("salt pasta water steak rest slice spice toast grind sauce bind noodle towel board "
         "gelatine bloom butter grate pastry stock skim simmer roast dry brown dough chill "
         "knife sharpen onion garlic lemon zest herb thyme basil oven rack pan heat oil").split()
TOPICS = ["pasta", "meat", "spices", "baking", "safety", "vegetables", "stock", "knives"]


def main(path, n):
    rng = random.Random(20261201)
    with open(path, "w") as out:
        for i in range(n):
            words = " ".join(rng.choice(WORDS) for _ in range(14))
            record = {
                "text": f"Tip {i}: {words}.",
                "topic": rng.choice(TOPICS),
                "difficulty": rng.randint(1, 5),
                "verified": rng.random() < 0.5,
                "keywords": [rng.choice(WORDS), rng.choice(WORDS)],
            }
            out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
