"""Write pretrained lineages of three families to try `featureflow materialize` on models made outside
featureflow: per family a random-initialised 2-layer base and a fine-tune of it (a few AdamW steps on
other standard-library text), saved as Hugging Face folders, and a lineage file (base, fine-tune, a SLERP
merge made here, SAEs at layer 1, a bracket task for circuits and CMAP), the recipe of
tests/test_pretrained_lineage.py.

  python bench/pretrained_families.py --out /tmp/ff-families [--families llama,neox,gpt2]
  FEATUREFLOW_HOME=/tmp/ff-families/home-neox featureflow materialize --lineage /tmp/ff-families/pre-neox.yaml
"""

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_pretrained_lineage import pretrained_lineage  # noqa: E402
from tiny_models import finetune_outside, save, stdlib_texts, tiny_model, tiny_tokenizer  # noqa: E402

HOOKS = {"llama": "blocks.1.mlp.hook_post", "neox": "blocks.1.hook_resid_post", "gpt2": "blocks.1.mlp.hook_post"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--families", default="llama,neox,gpt2")
    args = ap.parse_args()
    out = Path(args.out)
    tok = tiny_tokenizer()
    for family in args.families.split(","):
        base = save(tiny_model(family, tok, seed=3), tok, out / family / "base")
        ft = save(finetune_outside(tiny_model(family, tok, seed=3), tok, stdlib_texts("json/*.py", 4), steps=6), tok, out / family / "ft")
        path = out / f"pre-{family}.yaml"
        path.write_text(yaml.safe_dump(pretrained_lineage(f"pre-{family}", base, ft, HOOKS[family]), sort_keys=False))
        print(f"{family}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
