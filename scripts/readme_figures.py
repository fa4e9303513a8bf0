#!/usr/bin/env python3
"""Rewrites the last column of README.md's example table from the examples' JSON lines, so the
README's figures are measurements rather than typed claims:

    scripts/run_examples.sh benches/results/examples-lavapipe-mesa25-2core.jsonl
    python3 scripts/readme_figures.py benches/results/examples-lavapipe-mesa25-2core.jsonl

A row whose example has no line (or no formatter below) keeps its text. The sentence before the
table names the file the figures came from.
"""
import json
import re
import sys
from pathlib import Path


def pct(v):
    return f"{100 * v:.2f}%"


def secs(v):
    return f"{v:.1f} s" if v < 100 else f"{v / 60:.1f} min"


def g(d, *keys, default=None):
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return default


def lenet_mnist(d):
    return (f"{pct(d['test_accuracy'])} held out; {secs(d['train_seconds'])} of training "
            f"({d['steps']} steps, {d['submissions']} submissions)")


def mnist_mlp(d):
    return f"{pct(d['test_accuracy'])} in {secs(d['train_seconds'])}"


def char_model(d):
    held = g(d, "val_loss_nats_per_char", "val_loss")
    loss = held if held is not None else d["train_loss"]
    which = "held-out" if held is not None else "training"
    return (f"{which} loss {loss:.3f} after {d['steps']} steps in {secs(d['train_seconds'])} "
            f"({d['chars_per_second']:,.0f} chars/s)")


def rnn_sequence(d):
    return f"{pct(d['test_accuracy'])} in {secs(d['train_seconds'])}"


def linear_regression(d):
    return f"w = {d['w']:.3f}, b = {d['b']:.3f} (3 and 2) after {d['steps']} steps"


def predict(d):
    return f"{d['correct']} of {len(d['images']) if isinstance(d['images'], list) else d['images']} correct"


def finetune(d):
    return (f"digits 0-4: {pct(d['accuracy_before'])} -> {pct(d['accuracy_after'])}; "
            f"frozen layers unchanged: {str(d['frozen_layers_unchanged']).lower()}")


def prune(d):
    return (f"{d['sparsity']:.0%} sparse: {pct(d['accuracy_before'])} -> "
            f"{pct(d['accuracy_pruned'])} -> {pct(d['accuracy_finetuned'])}")


def distill(d):
    return (f"teacher {pct(d['teacher_accuracy'])}; student alone {pct(d['student_accuracy'])}, "
            f"distilled {pct(d['distilled_student_accuracy'])}")


def quantize(d):
    parts = [f"f32 {pct(d['f32_accuracy'])}"]
    for k in ("int8", "f16"):
        if d.get(f"{k}_accuracy") is not None:
            parts.append(f"{k} {pct(d[f'{k}_accuracy'])}")
    sizes = [f"{d[f'{k}_bytes'] / 1000:.0f} KB" for k in ("f32", "int8", "f16")
             if d.get(f"{k}_bytes") is not None]
    speed = [f"{d[f'{k}_images_per_second']:,.0f}" for k in ("f32", "int8", "f16")
             if d.get(f"{k}_images_per_second") is not None]
    return f"{', '.join(parts)}; {' / '.join(sizes)}; {' / '.join(speed)} images/s"


def custom_op(d):
    return f"gradcheck {d['gradcheck']}; training loss {d['train_loss']:.3f} in {secs(d['seconds'])}"


def embed(d):
    if d.get("bench"):
        return (f"{d['sentences_per_second']:.1f} sentences/s at batch {d['batch']} x "
                f"{d['tokens_per_text']} tokens ({d['ms_per_batch']:.0f} ms a batch)")
    return f"{d['sentences']} sentences in {secs(d['seconds'])}"


def bert_finetune(d):
    return (f"{d['steps']} steps of {d['batch_pairs']} pairs in {secs(d['train_seconds'])} "
            f"({d['median_step_seconds']:.1f} s/step): loss {d['loss_first5']:.2f} -> "
            f"{d['loss_last5']:.2f}, held-out top-1 of 64 {pct(d['top1_of_64_before'])} -> "
            f"{pct(d['top1_of_64_after'])}")


def generate(d):
    s = f"{d['tokens_per_second_cache']:.0f} tokens/s with the cache"
    if d.get("tokens_per_second_no_cache") is not None:
        s += f", {d['tokens_per_second_no_cache']:.0f} without"
    return s + " (the tiny test GPT-2)"


def gpt2_train(d):
    mem = d["memory_peak_bytes"] / 1e6
    return (f"{d['parameters'] / 1e6:.1f}M parameters, {d['steps']} steps in {secs(d['train_seconds'])}: "
            f"loss {d['first_loss']:.2f} -> {d['final_loss']:.2f}, held-out {d['val_loss']:.2f}; "
            f"{d['tokens_per_second']:,.0f} tokens/s; memory high-water {mem:,.0f} MB")


FORMAT = {
    "lenet_mnist": lenet_mnist, "mnist_mlp": mnist_mlp, "char_transformer": char_model,
    "char_lstm": char_model, "rnn_sequence": rnn_sequence, "linear_regression": linear_regression,
    "predict": predict, "finetune": finetune, "prune": prune, "distill": distill,
    "quantize": quantize, "custom_op": custom_op, "embed": embed,
    "bert_finetune": bert_finetune, "generate": generate, "gpt2_train": gpt2_train,
}


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: readme_figures.py EXAMPLES.jsonl [README.md]")
    src = sys.argv[1]
    readme = Path(sys.argv[2] if len(sys.argv) > 2 else "README.md")
    lines = {}
    for line in open(src):
        line = line.strip()
        if line.startswith("{"):
            d = json.loads(line)
            if "example" in d:
                lines[d["example"]] = d  # the last line of each example wins
    out, done = [], []
    for row in readme.read_text().splitlines():
        m = re.match(r"\| `([a-z_0-9]+)` \|", row)
        if m and m.group(1) in lines and m.group(1) in FORMAT:
            cells = row.split(" | ")
            try:
                cells[-1] = FORMAT[m.group(1)](lines[m.group(1)]) + " |"
                row = " | ".join(cells)
                done.append(m.group(1))
            except (KeyError, TypeError) as e:
                print(f"readme_figures: {m.group(1)}: field {e} missing; row kept", file=sys.stderr)
        if row.startswith("The last column is generated by"):
            row = None
        if row is not None:
            if row.startswith("| example | what |"):
                out.append(f"The last column is generated by `scripts/readme_figures.py` from the "
                           f"examples' JSON lines in `{src}` (`scripts/run_examples.sh`).")
                out.append("")
            out.append(row)
    # The sentence is followed by a blank line; drop a doubled one from an earlier run.
    text = "\n".join(out) + "\n"
    text = re.sub(r"(\(`scripts/run_examples.sh`\)\.\n\n)\n+", r"\1", text)
    readme.write_text(text)
    print(json.dumps({"script": "readme_figures", "rows": done}))


if __name__ == "__main__":
    main()
