"""Tasks for circuit analysis and cross-model activation patching (Prakash et al. 2024).

A task is a seeded generator of examples, each a clean prompt, the correct next token (`answer`), a
counterfactual prompt of the same length that differs from the clean one only where the task's
evidence sits, and the counterfactual's answer (`wrong`). The metric reads the logits at the last
prompt position: logit difference `logit[answer] - logit[wrong]`, accuracy = share of examples whose
difference is positive (two-way, chance 0.5) and top-1 accuracy over the whole vocabulary.

Two families:
- mined from held-out text the models were trained on (token windows; nothing invented):
  `close_bracket` (which of ) ] } closes the innermost open bracket), `close_quote` (which of ' "
  closes the open string on this line), `copy_identifier` (an identifier the window used before
  comes again); the counterfactual swaps the opener, or every earlier occurrence of the identifier;
- templated: `entity_tracking`, the paper's task ("The apple is in box F, ... Box F contains the" ->
  " apple"; the counterfactual asks for another box), meant for larger Hugging Face models.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


OPEN_CLOSE = {"(": ")", "[": "]", "{": "}"}
QUOTES = ("'", '"')
IDENTIFIER = re.compile(r"^ ?[A-Za-z_][A-Za-z0-9_]{2,}$")


class TaskError(ValueError):
    """A task that cannot be built as configured (names the task and the field to change)."""

    def __init__(self, task: str, field: str, problem: str):
        super().__init__(f"task '{task}' ({field}): {problem}")
        self.task, self.field, self.problem = task, field, problem


@dataclass
class TaskBatch:
    """Examples of one task, all prompts `length` tokens long; the metric reads the last position."""

    name: str
    kind: str
    clean: torch.Tensor  # int64 [n, length]
    corrupt: torch.Tensor  # int64 [n, length], differs from clean where the evidence sits
    answer: torch.Tensor  # int64 [n], the clean prompt's next token
    wrong: torch.Tensor  # int64 [n], the corrupt prompt's next token (the alternative the metric compares with)
    key: torch.Tensor  # int64 [n], the last position where clean and corrupt differ
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def length(self) -> int:
        return self.clean.shape[1]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).contiguous() for k in ("clean", "corrupt", "answer", "wrong", "key")}

    @classmethod
    def from_tensors(cls, name: str, kind: str, t: dict[str, torch.Tensor], meta: dict | None = None) -> "TaskBatch":
        return cls(name, kind, *(t[k].long() for k in ("clean", "corrupt", "answer", "wrong", "key")), meta=meta or {})

    def subset(self, rows) -> "TaskBatch":
        """The examples at `rows` (indices), same task."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        return TaskBatch(self.name, self.kind, *(getattr(self, k)[idx] for k in ("clean", "corrupt", "answer", "wrong", "key")),
                         meta=dict(self.meta))

    def halves(self, seed: int) -> tuple["TaskBatch", "TaskBatch"]:
        """Two disjoint halves of the examples, drawn with `seed`: a circuit is found on the first and scored
        on the second, so its faithfulness is not measured on the prompts that chose it."""
        if len(self) < 2:
            raise ValueError(f"task {self.name}: {len(self)} example(s) cannot be split into halves")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        half = len(self) // 2
        return self.subset(order[:half].sort().values), self.subset(order[half:].sort().values)


# ---------------------------------------------------------------------------------------------
# Metric
# ---------------------------------------------------------------------------------------------


def logit_diff(logits: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """[n] logit[answer] - logit[wrong] from last-position logits [n, vocab]."""
    return logits.gather(1, answer[:, None])[:, 0] - logits.gather(1, wrong[:, None])[:, 0]


def task_metrics(logits: torch.Tensor, batch: TaskBatch) -> dict[str, float]:
    """Mean logit difference, two-way accuracy and top-1 accuracy from last-position logits."""
    d = logit_diff(logits, batch.answer.to(logits.device), batch.wrong.to(logits.device))
    return {"logit_diff": float(d.mean()), "accuracy": float((d > 0).float().mean()),
            "top1": float((logits.argmax(1) == batch.answer.to(logits.device)).float().mean())}


# ---------------------------------------------------------------------------------------------
# Mined tasks: windows of held-out token blocks
# ---------------------------------------------------------------------------------------------


def _exact_ids(strings: list[str]) -> dict[str, int]:
    """token string -> id for strings that are whole tokens (first id wins)."""
    out: dict[str, int] = {}
    for i, s in enumerate(strings):
        out.setdefault(s, i)
    return out


def _candidates(rows: torch.Tensor, length: int):
    """(row, target position) for every position with `length` tokens before it, in a seeded order later."""
    n, width = rows.shape
    return [(r, t) for r in range(n) for t in range(length, width)]


def _finish(name: str, kind: str, found: list, n: int, length: int, seed: int, minimum: int, field: str) -> TaskBatch:
    if len(found) < minimum:
        raise TaskError(name, field, f"found {len(found)} examples in the held-out text, fewer than {minimum}; "
                        "lower `length` or `examples`, or give the base node more validation tokens")
    rng = random.Random(seed)
    rng.shuffle(found)
    # balanced over answers (round robin): a model that ignores the evidence and always names the most
    # common closer should not score well
    groups: dict[int, list] = {}
    for ex in found:
        groups.setdefault(ex[2] if kind != "copy_identifier" else 0, []).append(ex)
    available = len(found)
    found = [g[i] for i in range(max(map(len, groups.values()))) for g in groups.values() if i < len(g)][:n]
    clean, corrupt, answer, wrong, key = zip(*found)
    return TaskBatch(name, kind, torch.stack(clean), torch.stack(corrupt), torch.tensor(answer), torch.tensor(wrong),
                     torch.tensor(key), meta={"available": available, "length": length})


def mine_close_bracket(rows: torch.Tensor, strings: list[str], name: str, n: int, length: int, seed: int,
                       minimum: int = 16) -> TaskBatch:
    """Positions whose next token is exactly `)`, `]` or `}` closing the innermost bracket opened inside
    the prompt by a token that is exactly `(`, `[` or `{` (optionally with a leading space); the
    counterfactual swaps that opener for another kind (seeded), whose closer becomes `wrong`."""
    ids = _exact_ids(strings)
    rng = random.Random(seed)
    found = []
    for r, t in _candidates(rows, length):
        ans = strings[int(rows[r, t])]
        if ans not in OPEN_CLOSE.values():
            continue
        window = rows[r, t - length:t]
        depth, opener = 0, None
        for j in range(length - 1, -1, -1):
            s = strings[int(window[j])]
            for ch in reversed(s):
                if ch in OPEN_CLOSE.values():
                    depth += 1
                elif ch in OPEN_CLOSE:
                    if depth == 0:
                        opener = (j, ch)
                        break
                    depth -= 1
            if opener:
                break
        if not opener:
            continue
        j, ch = opener
        text = strings[int(window[j])]
        if text.strip() != ch or OPEN_CLOSE[ch] != ans:
            continue
        other = rng.choice([o for o in OPEN_CLOSE if o != ch])
        swapped = text.replace(ch, other)
        if swapped not in ids or OPEN_CLOSE[other] not in ids:
            continue
        corrupt = window.clone()
        corrupt[j] = ids[swapped]
        found.append((window.long(), corrupt.long(), int(rows[r, t]), ids[OPEN_CLOSE[other]], j))
    return _finish(name, "close_bracket", found, n, length, seed, minimum, "kind")


def mine_close_quote(rows: torch.Tensor, strings: list[str], name: str, n: int, length: int, seed: int,
                     minimum: int = 16) -> TaskBatch:
    """Positions whose next token is exactly `'` or `"` closing a string opened on the same line by a
    token that is exactly that quote (optionally with a leading space), with no other quote between;
    the counterfactual opens the string with the other quote."""
    ids = _exact_ids(strings)
    found = []
    for r, t in _candidates(rows, length):
        ans = strings[int(rows[r, t])]
        if ans not in QUOTES:
            continue
        window = rows[r, t - length:t]
        opener = None
        for j in range(length - 1, -1, -1):
            s = strings[int(window[j])]
            if "\n" in s or any(q in s for q in QUOTES) and s.strip() != ans:
                break
            if s.strip() == ans:
                opener = j
                break
        if opener is None:
            continue
        other = QUOTES[1 - QUOTES.index(ans)]
        swapped = strings[int(window[opener])].replace(ans, other)
        if swapped not in ids or other not in ids:
            continue
        corrupt = window.clone()
        corrupt[opener] = ids[swapped]
        found.append((window.long(), corrupt.long(), int(rows[r, t]), ids[other], opener))
    return _finish(name, "close_quote", found, n, length, seed, minimum, "kind")


def mine_copy_identifier(rows: torch.Tensor, strings: list[str], name: str, n: int, length: int, seed: int,
                         minimum: int = 16, common: int = 200) -> TaskBatch:
    """Positions whose next token is an identifier (3+ characters, not among the `common` most frequent
    tokens of the text) that occurs earlier in the prompt but not as its last token; the
    counterfactual replaces every earlier occurrence by the answer of another example that the prompt
    does not hold (seeded), which becomes `wrong`: both answers are drawn from the same pool, so the
    clean-counterfactual gap measures copying, not a preference for frequent tokens."""
    counts = torch.bincount(rows.flatten(), minlength=len(strings))
    frequent = set(counts.argsort(descending=True)[:common].tolist())
    is_ident = {i for i, s in enumerate(strings) if IDENTIFIER.match(s)} - frequent
    rng = random.Random(seed)
    seen = []
    for r, t in _candidates(rows, length):
        a = int(rows[r, t])
        if a not in is_ident:
            continue
        window = rows[r, t - length:t]
        where = (window == a).nonzero()[:, 0]
        if len(where) and int(where[-1]) != length - 1:
            seen.append((window, a, where))
    pool = {lead: [a for _, a, _ in seen if strings[a].startswith(" ") == lead] for lead in (True, False)}
    found = []
    for window, a, where in seen:
        present = set(window.tolist())
        options = pool[strings[a].startswith(" ")]
        for _ in range(20):
            b = rng.choice(options)
            if b not in present and b != a:
                break
        else:
            continue
        corrupt = window.clone()
        corrupt[where] = b
        found.append((window.long(), corrupt.long(), a, b, int(where[-1])))
    return _finish(name, "copy_identifier", found, n, length, seed, minimum, "kind")


MINED = {"close_bracket": mine_close_bracket, "close_quote": mine_close_quote, "copy_identifier": mine_copy_identifier}


# ---------------------------------------------------------------------------------------------
# Templated: the paper's entity tracking
# ---------------------------------------------------------------------------------------------


def entity_prompt(objects: list[str], boxes: list[str], query: int) -> str:
    pairs = ", ".join(f"the {o} is in box {b}" for o, b in zip(objects, boxes))
    return f"{pairs[0].upper()}{pairs[1:]}. Box {boxes[query]} contains the"


def single_token(tokenizer, text: str, task: str, field: str, context: str = "the") -> int:
    """The one token `text` (with its leading space) becomes after `context`, as it appears inside a
    prompt (a SentencePiece tokenizer encodes a lone " apple" differently from "the apple")."""
    before = tokenizer.encode(context, add_special_tokens=False)
    ids = tokenizer.encode(context + text, add_special_tokens=False)
    if ids[:len(before)] != before or len(ids) - len(before) != 1:
        extra = ids[len(before):] if ids[:len(before)] == before else ids
        pieces = [tokenizer.decode([i]) for i in extra]
        raise TaskError(task, field, f"{text!r} is {len(extra)} tokens under this lineage's tokenizer ({pieces}); "
                        "answers and labels must be single tokens")
    return ids[-1]


def entity_tracking(tokenizer, name: str, n: int, n_objects: int, objects: list[str], boxes: list[str], seed: int,
                    n_ctx: int) -> TaskBatch:
    """Kim & Schuster's entity tracking as Prakash et al. use it: `n_objects` objects in labelled boxes,
    the query names one box; the counterfactual queries another box (its object is `wrong`)."""
    if len(objects) < n_objects or len(boxes) < n_objects:
        raise TaskError(name, "objects", f"needs at least {n_objects} objects and boxes (n_objects)")
    for o in objects:
        single_token(tokenizer, " " + o, name, "objects")
    for b in boxes:
        single_token(tokenizer, " " + b, name, "boxes", context="box")
    rng = random.Random(seed)
    clean, corrupt, answer, wrong, key = [], [], [], [], []
    length = None
    for _ in range(n):
        objs, bxs = rng.sample(objects, n_objects), rng.sample(boxes, n_objects)
        q, q2 = rng.sample(range(n_objects), 2)
        a, b = tokenizer.encode(entity_prompt(objs, bxs, q), add_special_tokens=False), \
            tokenizer.encode(entity_prompt(objs, bxs, q2), add_special_tokens=False)
        if len(a) != len(b) or (length is not None and len(a) != length):
            raise TaskError(name, "boxes", "prompts tokenize to different lengths (a box label merges with its "
                            "neighbours); use other labels")
        length = len(a)
        if length > n_ctx:
            raise TaskError(name, "n_objects", f"prompts are {length} tokens, longer than the model's n_ctx {n_ctx}")
        diff = [i for i in range(length) if a[i] != b[i]]
        clean.append(torch.tensor(a))
        corrupt.append(torch.tensor(b))
        answer.append(single_token(tokenizer, " " + objs[q], name, "objects"))
        wrong.append(single_token(tokenizer, " " + objs[q2], name, "objects"))
        key.append(diff[-1])
    return TaskBatch(name, "entity_tracking", torch.stack(clean), torch.stack(corrupt), torch.tensor(answer),
                     torch.tensor(wrong), torch.tensor(key), meta={"length": length})


def build_task(spec, tokenizer, strings: list[str], rows: torch.Tensor | None, n_ctx: int, seed: int) -> TaskBatch:
    """The TaskBatch a lineage `tasks:` entry describes (`spec`: lineage.TaskSpec, validated: a mined
    task's `length` is within n_ctx there; an entity prompt's length is only known here)."""
    if spec.kind == "entity_tracking":
        return entity_tracking(tokenizer, spec.name, spec.examples, spec.n_objects, spec.objects, spec.boxes, seed, n_ctx)
    return MINED[spec.kind](rows, strings, spec.name, spec.examples, spec.length, seed, minimum=spec.min_examples)


def describe(batch: TaskBatch, strings: list[str], k: int = 5) -> list[dict]:
    """The first `k` examples as text: the prompt's tail, answer, counterfactual answer, key token."""
    out = []
    for i in range(min(k, len(batch))):
        text = "".join(strings[int(t)] for t in batch.clean[i])
        out.append({"prompt": text[-120:], "answer": strings[int(batch.answer[i])], "wrong": strings[int(batch.wrong[i])],
                    "key_token": strings[int(batch.clean[i, batch.key[i]])],
                    "corrupt_key_token": strings[int(batch.corrupt[i, batch.key[i]])],
                    "key_position": int(batch.key[i]) - batch.length})
    return out


def save_tasks(folder, batches: dict[str, TaskBatch], strings: list[str]) -> None:
    """<name>.safetensors per task and tasks.json (kind, sizes, the first examples as text)."""
    folder = Path(folder)
    index = {}
    for name, b in batches.items():
        save_file(b.tensors(), str(folder / f"{name}.safetensors"))
        index[name] = {"kind": b.kind, "examples": len(b), "length": b.length, **b.meta, "samples": describe(b, strings)}
    (folder / "tasks.json").write_text(json.dumps(index, indent=1))


def load_tasks(folder) -> dict[str, TaskBatch]:
    folder = Path(folder)
    index = json.loads((folder / "tasks.json").read_text())
    return {name: TaskBatch.from_tensors(name, m["kind"], load_file(str(folder / f"{name}.safetensors")), m)
            for name, m in index.items()}
