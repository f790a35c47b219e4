"""The synthesize stage: new labelled problems from seed problems (new numbers with exact golds
from the seeds' equations; problems the teacher rephrases or writes, labelled by its votes).

    cotdistill synthesize --problems seeds.jsonl --out runs/synth --strategy numbers --count 4
"""

from cotdistill.synthesize.config import SynthesizeConfig
from cotdistill.synthesize.stage import run_synthesize

__all__ = ["SynthesizeConfig", "run_synthesize"]
