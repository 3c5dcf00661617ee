"""`synalign evaluate`, the downstream check (paper Table 1): train a classifier on real only, real + a random
resample and real + the aligned resample of a completed run, and score accuracy and macro-F1 on held-out rows.

The held-out rows come from a file (`test`), never from the run's own real rows: those served as demonstrations and
as the alignment target, so scoring on them would credit "+random" and "+aligned" with what they copied.
Losses: ce (plain cross-entropy), imp (IMP-Loss: importance_weight per synthetic row), dimp (DIMP-Loss: weight
P_real(y|x) / P_model_t(y|x), recomputed every step). Real rows always weigh 1.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from synalign_ray import io
from synalign_ray.config import SynAlignConfig
from synalign_ray.errors import InputError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TRAIN_SETS = ("real only", "real + random", "real + aligned")


def quality_checker(real_emb: np.ndarray, real_y: np.ndarray, seed: int):
    """P_real(y|x) model (the IMP/DIMP quality checker): a logistic regression on the real rows' embeddings.
    Read it with `importance.label_probability`, which looks labels up through the model's own classes."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, random_state=seed).fit(real_emb, real_y)


def row_weights(loss: str, imp: np.ndarray) -> np.ndarray:
    """Fixed per-row loss weights: IMP-Loss uses the importance weights (1 on real rows), the rest 1."""
    return imp if loss == "imp" else np.ones(len(imp))


def train_linear(x: np.ndarray, y: np.ndarray, n_classes: int, loss: str, is_syn: np.ndarray,
                 imp: np.ndarray, p_real: np.ndarray, steps: int = 300, lr: float = 0.05,
                 weight_decay: float = 1e-4, seed: int = 0):
    """Softmax regression on embeddings by full-batch Adam, with CE, IMP or DIMP row weights."""
    import torch

    torch.manual_seed(seed)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    model = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    fixed = torch.as_tensor(row_weights(loss, imp), dtype=torch.float32)
    syn = torch.as_tensor(is_syn)
    p_real_t = torch.as_tensor(p_real, dtype=torch.float32)
    for _ in range(steps):
        logits = model(xt)
        per_row = torch.nn.functional.cross_entropy(logits, yt, reduction="none")
        weights = fixed
        if loss == "dimp":
            with torch.no_grad():  # weights are data, not part of the gradient
                p_model = torch.softmax(logits, dim=1).gather(1, yt[:, None])[:, 0].clamp_min(1e-6)
                weights = torch.where(syn, p_real_t / p_model, torch.ones_like(p_model))
        opt.zero_grad()
        ((weights * per_row).sum() / weights.sum()).backward()
        opt.step()
    # torch.tensor copies: the test embeddings may be read-only Arrow buffers.
    return lambda q: model(torch.tensor(q, dtype=torch.float32)).argmax(1).numpy()


def finetune(texts: list[str], y: np.ndarray, n_classes: int, loss: str, is_syn: np.ndarray,
             imp: np.ndarray, p_real: np.ndarray, model_name: str, epochs: int, lr: float,
             batch_size: int, weight_decay: float, warmup: float, seed: int):
    """Fine-tune a transformer classifier (GPU when present) with the same weighted losses; returns a predictor."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(model_name)
    model = AutoModelForSequenceClassification.from_pretrained(model_name, num_labels=n_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(texts) // batch_size)
    sched = get_linear_schedule_with_warmup(opt, int(warmup * steps), steps)
    fixed = row_weights(loss, imp)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(texts))
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=128,
                      return_tensors="pt").to(device)
            yt = torch.as_tensor(y[idx], device=device)
            logits = model(**enc).logits
            per_row = torch.nn.functional.cross_entropy(logits, yt, reduction="none")
            w = torch.as_tensor(fixed[idx], dtype=torch.float32, device=device)
            if loss == "dimp":
                with torch.no_grad():
                    p_model = torch.softmax(logits, 1).gather(1, yt[:, None])[:, 0].clamp_min(1e-6)
                    pr = torch.as_tensor(p_real[idx], dtype=torch.float32, device=device)
                    w = torch.where(torch.as_tensor(is_syn[idx], device=device), pr / p_model, torch.ones_like(pr))
            opt.zero_grad()
            ((w * per_row).sum() / w.sum()).backward()
            opt.step()
            sched.step()
    model.eval()

    def predict(q_texts: list[str]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for s in range(0, len(q_texts), 64):
                enc = tok(q_texts[s:s + 64], padding=True, truncation=True, max_length=128,
                          return_tensors="pt").to(device)
                out.append(model(**enc).logits.argmax(1).cpu().numpy())
        return np.concatenate(out)

    return predict



def _read_run(run_dir: str, config: SynAlignConfig) -> tuple[SynAlignConfig, pa.Table, pa.Table, pa.Table]:
    """The run's config (storage and resources from `config`: the run's own has its secrets masked and may name
    another cluster), its embedded real rows, its kept generated rows and its aligned draw."""
    import pyarrow.compute as pc

    from synalign_ray.config import build_config

    from synalign_ray.run_folder import RunFolder

    loc = io.resolve(run_dir, config.storage)
    run = RunFolder(loc).manifest()
    if run is None or run.get("kind") != "run":
        raise InputError(f"{loc.url} is not a completed `synalign run` directory (no run manifest)")
    cfg = build_config({**run["config"], "storage": config.storage.model_dump(),
                        "resources": config.resources.model_dump()})
    if cfg.data.label_column is None:
        raise InputError("evaluation needs labelled data (data.label_column is null in this run)")
    real, gen, aligned = (RunFolder(loc.join(name)).read() for name in ("embeddings", "generated_embeddings", "aligned"))
    if "drop_reason" in gen.column_names:  # rows that failed a quality check never reach a training set
        gen = gen.filter(pc.is_null(gen.column("drop_reason")))
    return cfg, real, gen, aligned


def synthetic_sets(gen: pa.Table, aligned: pa.Table, seed: int) -> dict[str, np.ndarray]:
    """Positions in `gen` (the kept generated rows) that each training set adds to the real rows: none, a uniform
    random draw, and the aligned draw's synthetic rows, joined on generated_id (the row's row_id in
    generated_embeddings; positions in the aligned draw's own input differ once rows were filtered)."""
    gen_pos = {int(r): i for i, r in enumerate(gen.column(io.ROW_ID).to_pylist())}
    synthetic = aligned.filter(pa.array(np.asarray(aligned.column("source").to_pylist()) == "synthetic"))
    ids = synthetic.column("generated_id").to_pylist()
    missing = sorted({int(g) for g in ids if int(g) not in gen_pos})
    if missing:
        raise InputError(f"{len(missing)} aligned row(s) name generated rows that are not kept generated rows "
                         f"(first generated_id {missing[0]}): the run's folders do not belong together")
    aligned_idx = np.array([gen_pos[int(g)] for g in ids], dtype=np.int64)
    random_idx = np.random.default_rng(seed).choice(len(gen_pos), size=len(aligned_idx), replace=True)
    return dict(zip(TRAIN_SETS, (np.array([], dtype=np.int64), random_idx, aligned_idx)))


def _text_key(text: str) -> str:
    return " ".join(text.casefold().split())


def _read_test(test: str, cfg: SynAlignConfig, real_texts: list[str]) -> tuple[pa.Table, np.ndarray, int]:
    """The held-out rows, embedded with the run's encoder, minus any row whose text is one of the run's real rows
    (it was a possible demonstration and part of the alignment target). Returns (rows, embeddings, dropped)."""
    from synalign_ray.runtime import ray_session
    from synalign_ray.stages.align import ensure_embedded, read_rows

    rows = read_rows(test, cfg, "test", need_labels=True)
    seen = {_text_key(t) for t in real_texts}
    fresh = np.array([_text_key(t) not in seen for t in rows.column(cfg.data.text_column).to_pylist()], dtype=bool)
    dropped = int((~fresh).sum())
    if not fresh.any():
        raise InputError(f"every row of the test input {test} is one of the run's real rows; evaluate needs rows "
                         "held out before the run")
    rows = rows.filter(pa.array(fresh))
    if io.EMBEDDING in rows.column_names:
        return rows, io.embeddings_from_arrow(rows.column(io.EMBEDDING), test), dropped
    with ray_session(cfg.resources):
        rows, emb = ensure_embedded(rows, cfg)
    return rows, emb, dropped


def evaluate(run_dir: str | os.PathLike, test: str | os.PathLike | None, *, loss: str = "ce",
             classifier: str = "logreg", seed: int = 0, model: str = "distilbert-base-uncased", epochs: int = 6,
             lr: float = 5e-5, batch_size: int = 32, weight_decay: float = 1e-4, warmup: float = 0.06,
             max_train_rows: int | None = None, config: SynAlignConfig | None = None) -> dict[str, Any]:
    """Accuracy and macro-F1 on `test` (labelled rows held out of the run) of a classifier trained on each of
    TRAIN_SETS. `config` supplies storage and resources (default: defaults); the rest comes from the run."""
    from sklearn.metrics import accuracy_score, f1_score

    from synalign_ray.alignment.importance import importance_weights, label_probability

    if loss not in ("ce", "imp", "dimp"):
        raise InputError(f"unknown loss {loss!r}: ce, imp or dimp")
    if classifier not in ("logreg", "finetune"):
        raise InputError(f"unknown classifier {classifier!r}: logreg or finetune")
    if test is None:
        raise InputError("evaluate needs held-out labelled rows (--test FILE): the run's own real rows served as "
                         "demonstrations and as the alignment target, so they cannot score it")
    run_dir, test = os.fspath(run_dir), os.fspath(test)
    cfg, real, gen, aligned = _read_run(run_dir, config or SynAlignConfig())
    label, text = cfg.data.label_column, cfg.data.text_column
    real_names = real.column(label).to_pylist()
    classes = sorted(set(real_names))
    if len(classes) < 2:
        raise InputError(f"evaluation needs at least two labels among the run's real rows, found {classes}")
    code = {c: i for i, c in enumerate(classes)}
    sets = synthetic_sets(gen, aligned, seed)
    test_rows, test_emb, test_dropped = _read_test(test, cfg, real.column(text).to_pylist())
    test_y = np.array([code.get(v, -1) for v in test_rows.column(label).to_pylist()])
    test_texts = test_rows.column(text).to_pylist()

    r_emb = io.embeddings_from_arrow(real.column(io.EMBEDDING))
    r_y = np.array([code[v] for v in real_names])
    r_texts = real.column(text).to_pylist()
    gen_emb = io.embeddings_from_arrow(gen.column(io.EMBEDDING))
    gen_names = gen.column("label").to_pylist()
    gen_y = np.array([code.get(v, -1) for v in gen_names])
    gen_texts = gen.column("text").to_pylist()
    checker = quality_checker(r_emb, r_y, seed)
    imp_all = importance_weights(r_emb, np.array(real_names, dtype=object), gen_emb,
                                 np.array(gen_names, dtype=object), seed=seed) if loss == "imp" else None
    results = {}
    for name, syn_idx in sets.items():
        syn_idx = syn_idx[gen_y[syn_idx] >= 0]  # a label the real rows lack has no class to train
        x = np.vstack([r_emb, gen_emb[syn_idx]])
        y = np.concatenate([r_y, gen_y[syn_idx]])
        texts = r_texts + [gen_texts[i] for i in syn_idx]
        is_syn = np.concatenate([np.zeros(len(r_y), bool), np.ones(len(syn_idx), bool)])
        imp = np.concatenate([np.ones(len(r_y)), imp_all[syn_idx] if imp_all is not None else np.ones(len(syn_idx))])
        if max_train_rows is not None and len(y) > max_train_rows:
            keep = np.sort(np.random.default_rng(seed).choice(len(y), size=max_train_rows, replace=False))
            x, y, is_syn, imp, texts = x[keep], y[keep], is_syn[keep], imp[keep], [texts[i] for i in keep]
        # By the checker's classes: indexing predict_proba by label code assumed every code was a class it saw.
        p_real = label_probability(checker, x, y)
        if classifier == "logreg":
            pred = train_linear(x, y, len(classes), loss, is_syn, imp, p_real, seed=seed)(test_emb)
        else:
            pred = finetune(texts, y, len(classes), loss, is_syn, imp, p_real, model, epochs, lr, batch_size,
                            weight_decay, warmup, seed)(test_texts)
        results[name] = {"train_rows": int(len(y)), "synthetic_rows": int(is_syn.sum()),
                         "accuracy": float(accuracy_score(test_y, pred)),
                         "macro_f1": float(f1_score(test_y, pred, average="macro"))}
    return {"run_dir": run_dir, "test": test, "test_rows": int(len(test_y)),
            "test_rows_in_run_input": test_dropped, "loss": loss, "classifier": classifier, "results": results}


def format_results(res: dict[str, Any]) -> str:
    """The printed table of `evaluate`'s result."""
    lines = [f"evaluation of {res['run_dir']} ({res['classifier']}, loss {res['loss']}, {res['test_rows']} held-out "
             f"rows; {res['test_rows_in_run_input']} test rows dropped as the run's own input)",
             f"  {'train set':<16} {'rows':>7} {'synthetic':>9} {'accuracy':>9} {'macro-F1':>9}"]
    for name, r in res["results"].items():
        lines.append(f"  {name:<16} {r['train_rows']:>7} {r['synthetic_rows']:>9} {r['accuracy']:>9.4f} "
                     f"{r['macro_f1']:>9.4f}")
    return "\n".join(lines)
