"""Downstream check (paper Table 1): train a classifier on real only, real + random resample, real + aligned
resample of a completed run, and report accuracy and macro-F1 on held-out real rows.

Laptop:  python jobs/evaluate.py --run-dir synalign_output/local_demo --test ../shared/data/sst2_dev.parquet
Cluster: python jobs/evaluate.py --run-dir s3://… --test s3://…/test.parquet --classifier finetune \
             --model distilbert-base-uncased     (Table 7: lr 5e-5, batch 32, 6 epochs, wd 1e-4, warmup 6%)
Losses: ce (plain cross-entropy), imp (IMP-Loss: importance_weight per synthetic row), dimp (DIMP-Loss: weight
P_real(y|x) / P_model_t(y|x), recomputed every step). Real rows always weigh 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quality_checker(real_emb: np.ndarray, real_y: np.ndarray, seed: int):
    """P_real(y|x) model (the IMP/DIMP quality checker): a logistic regression on the real rows' embeddings."""
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
    return lambda q: model(torch.as_tensor(q, dtype=torch.float32)).argmax(1).numpy()


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


def evaluate(run_dir: str, test: str | None, loss: str = "ce", classifier: str = "logreg", seed: int = 0,
             model: str = "distilbert-base-uncased", epochs: int = 6, lr: float = 5e-5, batch_size: int = 32,
             weight_decay: float = 1e-4, warmup: float = 0.06, max_train_rows: int | None = None) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    from synalign_ray import io
    from synalign_ray.alignment.importance import importance_weights
    from synalign_ray.config import build_config
    from synalign_ray.errors import InputError
    from synalign_ray.pipeline import ensure_embedded, read_rows

    loc = io.resolve(run_dir)
    run = io.read_manifest(loc)
    if run is None or run.get("kind") != "run":
        raise InputError(f"{run_dir} is not a completed `synalign run` directory")
    cfg = build_config(run["config"])
    label = cfg.data.label_column
    if label is None:
        raise InputError("evaluation needs labelled data (data.label_column is null in this run)")
    real = io.read_parts(loc.join("embeddings"))
    gen = io.read_parts(loc.join("generated_embeddings"))
    if "drop_reason" in gen.column_names:  # rows that failed a quality check never reach a training set
        import pyarrow.compute as pc

        gen = gen.filter(pc.is_null(gen.column("drop_reason")))
    aligned = io.read_parts(loc.join("aligned"))
    real_emb = io.embeddings_from_arrow(real.column(io.EMBEDDING))
    gen_emb = io.embeddings_from_arrow(gen.column(io.EMBEDDING))
    real_y_names = real.column(label).to_pylist()
    classes = sorted(set(real_y_names))
    code = {c: i for i, c in enumerate(classes)}
    real_texts = real.column(cfg.data.text_column).to_pylist()
    if test:
        import ray

        test_rows = read_rows(test, cfg, "test", need_labels=True)
        with_ray = not ray.is_initialized()
        if with_ray:
            ray.init(include_dashboard=False, log_to_driver=False)
        try:
            test_rows, test_emb = ensure_embedded(test_rows, cfg)
        finally:
            if with_ray:
                ray.shutdown()
        test_y = np.array([code.get(v, -1) for v in test_rows.column(label).to_pylist()])
        test_texts = test_rows.column(cfg.data.text_column).to_pylist()
        train_idx = np.arange(len(real_emb))
    else:  # hold out 20% of the real rows
        perm = np.random.default_rng(seed).permutation(len(real_emb))
        cut = len(perm) // 5
        test_emb, test_y = real_emb[perm[:cut]], np.array([code[real_y_names[i]] for i in perm[:cut]])
        test_texts = [real_texts[i] for i in perm[:cut]]
        train_idx = np.sort(perm[cut:])
    r_emb, r_y = real_emb[train_idx], np.array([code[real_y_names[i]] for i in train_idx])
    r_texts = [real_texts[i] for i in train_idx]
    gen_y_all = np.array([code.get(v, -1) for v in gen.column("label").to_pylist()])
    # Aligned rows name their generated row by generated_id (its row_id in generated_embeddings); positions in the
    # aligned draw's own input are not positions here once rows were filtered.
    gen_pos = {int(r): i for i, r in enumerate(gen.column(io.ROW_ID).to_pylist())}
    synthetic = aligned.filter(pa.array(np.asarray(aligned.column("source").to_pylist()) == "synthetic"))
    aligned_idx = np.array([gen_pos[int(g)] for g in synthetic.column("generated_id").to_pylist()], dtype=np.int64)
    random_idx = np.random.default_rng(seed).choice(len(gen_emb), size=len(aligned_idx), replace=True)
    checker = quality_checker(r_emb, r_y, seed)
    imp_all = importance_weights(r_emb, np.array([classes[i] for i in r_y], dtype=object), gen_emb,
                                 np.array(gen.column("label").to_pylist(), dtype=object), seed=seed) \
        if loss == "imp" else None
    gen_texts = gen.column("text").to_pylist()
    results = {}
    for name, syn_idx in (("real only", np.array([], dtype=np.int64)), ("real + random", random_idx),
                          ("real + aligned", aligned_idx)):
        syn_idx = syn_idx[gen_y_all[syn_idx] >= 0]
        x = np.vstack([r_emb, gen_emb[syn_idx]])
        y = np.concatenate([r_y, gen_y_all[syn_idx]])
        texts = r_texts + [gen_texts[i] for i in syn_idx]
        is_syn = np.concatenate([np.zeros(len(r_y), bool), np.ones(len(syn_idx), bool)])
        imp = np.concatenate([np.ones(len(r_y)), imp_all[syn_idx] if imp_all is not None else np.ones(len(syn_idx))])
        if max_train_rows is not None and len(y) > max_train_rows:
            keep = np.sort(np.random.default_rng(seed).choice(len(y), size=max_train_rows, replace=False))
            x, y, is_syn, imp, texts = x[keep], y[keep], is_syn[keep], imp[keep], [texts[i] for i in keep]
        p_real = checker.predict_proba(x)[np.arange(len(y)), y]
        if classifier == "logreg":
            predict = train_linear(x, y, len(classes), loss, is_syn, imp, p_real, seed=seed)
            pred = predict(test_emb)
        else:
            predict = finetune(texts, y, len(classes), loss, is_syn, imp, p_real, model, epochs, lr, batch_size,
                               weight_decay, warmup, seed)
            pred = predict(test_texts)
        results[name] = {"train_rows": int(len(y)), "synthetic_rows": int(is_syn.sum()),
                         "accuracy": float(accuracy_score(test_y, pred)),
                         "macro_f1": float(f1_score(test_y, pred, average="macro"))}
    print(f"\nevaluation of {run_dir} ({classifier}, loss {loss}, {len(test_y)} held-out rows)")
    print(f"  {'train set':<16} {'rows':>7} {'synthetic':>9} {'accuracy':>9} {'macro-F1':>9}")
    for name, r in results.items():
        print(f"  {name:<16} {r['train_rows']:>7} {r['synthetic_rows']:>9} {r['accuracy']:>9.4f} {r['macro_f1']:>9.4f}")
    return {"run_dir": run_dir, "test": test, "loss": loss, "classifier": classifier, "results": results}


def main() -> int:
    from synalign_ray.errors import SynAlignError

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--test", help="held-out labelled rows; default: 20%% of the run's real rows")
    p.add_argument("--loss", choices=["ce", "imp", "dimp"], default="ce")
    p.add_argument("--classifier", choices=["logreg", "finetune"], default="logreg")
    p.add_argument("--model", default="distilbert-base-uncased", help="finetune: HF model id or folder")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.06)
    p.add_argument("--max-train-rows", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="write the results as JSON here")
    a = p.parse_args()
    try:
        res = evaluate(a.run_dir, a.test, a.loss, a.classifier, a.seed, a.model, a.epochs, a.lr, a.batch_size,
                       a.weight_decay, a.warmup, a.max_train_rows)
    except SynAlignError as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2
    if a.output:
        Path(a.output).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
