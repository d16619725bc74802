"""The prompts: Bills et al.'s explainer and all-at-once simulator, and delphi's detection and fuzzing
scorers. The system prompts are data files in `prompts/` beside this module; the functions here lay
out a feature's records under them."""

from __future__ import annotations

from importlib import resources

from featureflow_dagster.autointerp.records import Record, quantize


def _system(name: str) -> str:
    """A system prompt of `prompts/` (the file's final newline is not part of the prompt)."""
    return (resources.files("featureflow_dagster.autointerp") / "prompts" / f"{name}.txt").read_text().removesuffix("\n")


EXPLAINER_SYSTEM = _system("explainer_system")
SIMULATOR_SYSTEM = _system("simulator_system")
DETECTION_SYSTEM = _system("detection_system")  # EleutherAI's delphi: one request per feature, balanced accuracy
FUZZING_SYSTEM = _system("fuzzing_system")


def _show(token: str) -> str:
    return token.replace("\n", "\\n").replace("\t", "\\t")


def explainer_messages(records: list[Record], max_activation: float) -> list[dict]:
    """Bills et al.'s explainer prompt over the records, activations quantised to 0–10."""
    blocks = []
    for r in records:
        q = quantize(r.activations, max_activation)
        blocks.append("<start>\n" + "\n".join(f"{_show(t)}\t{a}" for t, a in zip(r.tokens, q)) + "\n<end>")
    user = ("Neuron 1\nActivations:\n" + "\n".join(blocks) +
            "\n\nExplanation of neuron 1 behavior: the main thing this neuron does is find")
    return [{"role": "system", "content": EXPLAINER_SYSTEM}, {"role": "user", "content": user}]


def simulator_messages(explanation: str, tokens: list[str]) -> list[dict]:
    """The all-at-once simulator prompt: the explanation and one record's tokens, every activation unknown."""
    user = (f"Neuron 1\nExplanation of neuron 1 behavior: the main thing this neuron does is find {explanation}\n"
            f"Activations ({len(tokens)} tokens):\n<start>\n" + "\n".join(f"{_show(t)}\tunknown" for t in tokens) + "\n<end>")
    return [{"role": "system", "content": SIMULATOR_SYSTEM}, {"role": "user", "content": user}]


def detection_messages(explanation: str, contexts: list[list[str]]) -> list[dict]:
    lines = [f"{i + 1}. {''.join(_show(t) for t in c)}" for i, c in enumerate(contexts)]
    return [{"role": "system", "content": DETECTION_SYSTEM},
            {"role": "user", "content": f"Explanation: {explanation}\nContexts:\n" + "\n".join(lines)}]


def fuzzing_messages(explanation: str, contexts: list[tuple[list[str], set[int]]]) -> list[dict]:
    lines = [f"{i + 1}. " + "".join(f"<<{_show(t)}>>" if j in marked else _show(t) for j, t in enumerate(c))
             for i, (c, marked) in enumerate(contexts)]
    return [{"role": "system", "content": FUZZING_SYSTEM},
            {"role": "user", "content": f"Explanation: {explanation}\nContexts:\n" + "\n".join(lines)}]
