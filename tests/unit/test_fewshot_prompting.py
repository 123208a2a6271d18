"""Few-shot prompting mechanics on tiny random causal LMs: where demonstrations come from, how many of each
class, nearest neighbours, contextual calibration, shared-prefix scoring against naive scoring."""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli, write_spec
from tests.unit.cli_checks import expect_error
from tlscale.errors import DataError
from tlscale.fewshot.calibration import calibrate, content_free_distribution
from tlscale.fewshot.prompts import Template
from tlscale.fewshot.scoring import label_log_scores, naive_scores, shared_prefix_scores, tokenize_choices
from tlscale.fewshot.selection import NearestSelection, cosine
from tlscale.spec.schema import FewshotSpec, JobSpec

WORDS = {"negative": ["dull", "boring", "awful", "tedious", "clumsy", "flat"],
         "positive": ["lovely", "gorgeous", "witty", "moving", "brilliant", "sharp"]}


def data_files(tmp_path, eval_file: bool = True):
    rows = ["sentence\tlabel"]
    for i in range(30):
        label = i % 2
        rows.append(f"train{i} a {WORDS[['negative', 'positive'][label]][i % 6]} film\t{label}")
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    rows = ["sentence\tlabel"] + [f"eval{i} quite a {WORDS[['negative', 'positive'][i % 2]][(i + 1) % 6]} movie\t{i % 2}"
                                  for i in range(12)]
    (tmp_path / "dev.tsv").write_text("\n".join(rows) + "\n")
    return tmp_path / "train.tsv", (tmp_path / "dev.tsv") if eval_file else None


def fewshot_spec(tmp_path, eval_file: bool = True, arch: str = "gpt2", **fewshot) -> dict:
    train, dev = data_files(tmp_path, eval_file)
    data = {"train_file": str(train), "text_column": "sentence", "label_column": "label",
            "labels": ["negative", "positive"]}
    if dev:
        data["eval_file"] = str(dev)
    return {"task": "text_classification", "output_dir": str(tmp_path / "fewshot"),
            "model": {"name_or_path": f"tiny:{arch}", "max_length": 128}, "data": data,
            "fewshot": {"k": 2, "template": "Review: {text}\nSentiment: {label}", "seeds": [0, 1],
                        "verbalizer": {"negative": "bad", "positive": "good"}, "encoder": "tiny:bert", **fewshot}}


def method(tmp_path, **kwargs):
    from tlscale.fewshot.methods import prompt_method

    return prompt_method(JobSpec.model_validate(fewshot_spec(tmp_path, **kwargs)))


@pytest.mark.parametrize("selection", ["random", "balanced", "knn"])
@pytest.mark.parametrize("eval_file", [True, False])
def test_demonstrations_never_come_from_the_evaluation_data(tmp_path, selection, eval_file):
    m = method(tmp_path, eval_file=eval_file, selection=selection, k=3, pool_per_class=5)
    eval_texts = set(m.data.eval.texts)
    for seed in (0, 1):
        result = m.run(seed)
        demos = m.demonstrations(seed)
        for i, prompt in enumerate(result.prompts):
            shown = [m.data.train.texts[j] for j in demos.for_input(i)]
            assert len(shown) == 6 and not set(shown) & eval_texts
            head = prompt.rsplit("\n\n", 1)[0]  # everything before the query
            assert not any(text in head for text in eval_texts), prompt
            assert prompt.endswith(m.data.eval.texts[i] + "\nSentiment:")
        assert result.metrics["num_examples"] == len(m.data.eval)


@pytest.mark.parametrize("k,k_per,per_class", [(1, "class", 1), (3, "class", 3), (4, "total", 2)])
def test_balanced_gives_exactly_k_per_class(tmp_path, k, k_per, per_class):
    m = method(tmp_path, selection="balanced", k=k, k_per=k_per)
    for seed in range(4):
        labels = [m.data.train.labels[j] for j in m.demonstrations(seed).fixed]
        assert labels.count(0) == labels.count(1) == per_class


def test_balanced_refuses_a_total_that_does_not_divide(tmp_path):
    with pytest.raises(DataError, match="cannot be balanced over 2 classes"):
        method(tmp_path, selection="balanced", k=3, k_per="total").demonstrations(0)


def test_random_draws_differ_by_seed_and_ignore_class(tmp_path):
    m = method(tmp_path, selection="random", k=4, k_per="total")
    draws = {tuple(m.demonstrations(seed).fixed) for seed in range(6)}
    assert len(draws) > 1 and all(len(d) == 4 for d in draws)
    assert any(sorted(m.data.train.labels[j] for j in d) != [0, 0, 1, 1] for d in draws)  # not balanced


def test_knn_returns_the_nearest_by_cosine_nearest_last():
    vectors = {"q": [1.0, 0.0], "a": [0.9, 0.1], "b": [0.0, 1.0], "c": [0.7, 0.7], "d": [-1.0, 0.0], "e": [1.0, 0.2]}
    embed = lambda texts: torch.tensor([vectors[t] for t in texts])  # noqa: E731
    texts, labels = ["a", "b", "c", "d", "e"], [0, 1, 0, 1, 1]
    total = NearestSelection(FewshotSpec(selection="knn", k=3, k_per="total"), labels, 2, "x")
    chosen = total.choose([0, 1, 2, 3, 4], 0, embed, queries=["q"], texts=texts).for_input(0)
    similarity = cosine(embed(["q"]), embed(texts))[0]
    expected = sorted(sorted(range(5), key=lambda i: -similarity[i])[:3], key=lambda i: similarity[i])
    assert chosen == expected == [2, 4, 0]  # c, e, a: the nearest (a) right before the query
    per_class = NearestSelection(FewshotSpec(selection="knn", k=1, k_per="class"), labels, 2, "x")
    assert sorted(per_class.choose([0, 1, 2, 3, 4], 0, embed, queries=["q"], texts=texts).for_input(0)) == [0, 4]


def test_contextual_calibration_makes_the_content_free_input_uniform():
    biased = torch.tensor([[0.8, 0.15, 0.05]]).log()
    p_cf = content_free_distribution(biased)
    assert torch.allclose(calibrate(biased, p_cf), torch.full((1, 3), 1 / 3), atol=1e-6)
    several = torch.tensor([[0.7, 0.3], [0.9, 0.1]]).log()  # mean [0.8, 0.2]
    p_cf = content_free_distribution(several)
    assert torch.allclose(p_cf, torch.tensor([0.8, 0.2]))
    assert torch.allclose(calibrate(torch.tensor([[0.8, 0.2]]).log(), p_cf), torch.tensor([[0.5, 0.5]]), atol=1e-6)
    q = calibrate(torch.tensor([[0.6, 0.4]]).log(), p_cf)  # 0.6/0.8 : 0.4/0.2 = 0.75 : 2
    assert torch.allclose(q, torch.tensor([[0.75 / 2.75, 2 / 2.75]]), atol=1e-6)


def test_calibration_through_the_method_uses_the_inputs_demonstrations(tmp_path):
    m = method(tmp_path, selection="balanced", k=1, calibration="contextual")
    demos = m.demonstrations(0)
    free = [m.prompt(demos.fixed, {"text": t, "text_pair": t}) for t in m.fewshot.content_free]
    log_scores = m.label_scores(free)
    p_cf = content_free_distribution(log_scores)
    assert not torch.allclose(p_cf, torch.full_like(p_cf, 0.5), atol=1e-3)  # the random model is biased
    uniform = calibrate(p_cf.log()[None], p_cf)
    assert torch.allclose(uniform, torch.full_like(uniform, 0.5), atol=1e-6)
    result = m.run(0)
    assert 0 <= result.metrics["uncalibrated_accuracy"] <= 1


@pytest.fixture(scope="module")
def tiny_lms():
    from tlscale.models import load_tokenizer
    from tlscale.models.loading import build_causal_lm
    from tlscale.spec.schema import ModelSpec

    lms = {}
    for arch in ("gpt2", "llama"):
        spec = ModelSpec(name_or_path=f"tiny:{arch}", max_length=128)
        torch.manual_seed(0)
        lms[arch] = build_causal_lm(spec).eval(), load_tokenizer(spec)
    return lms


class WithoutLogitsToKeep(torch.nn.Module):
    """A wrapper whose forward does not take logits_to_keep (as PEFT's): every position's logits come back."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


@pytest.mark.parametrize("words", ["multi-token", "one token"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_shared_prefix_scores_equal_naive_scores(tiny_lms, arch, words):
    from tlscale.data.causal_lm import prompt_ids

    model, tokenizer = tiny_lms[arch]
    template = Template("Review: {text}\nSentiment: {label}")
    prompts = [template.render([({"text": "a dull film"}, "bad")] * n, {"text": f"film number {n}"}) for n in range(5)]
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    if words == "multi-token":
        choices = tokenize_choices(tokenizer, [" good", " bad", " very good indeed", " not at all good, no"])
        assert len({len(c) for c in choices}) > 2  # multi-token choices of different lengths
    else:  # the prompt alone, left-padded, logits at the last position only
        choices = tokenize_choices(tokenizer, [" a", " b", " c"])
        assert {len(c) for c in choices} == {1}
    naive = naive_scores(model, ids, choices, batch_size=3, pad_id=tokenizer.pad_token_id)
    for scored in (model, WithoutLogitsToKeep(model)):
        shared = shared_prefix_scores(scored, ids, choices, batch_size=2, pad_id=tokenizer.pad_token_id)
        assert torch.allclose(shared.logprob, naive.logprob, atol=1e-4), (shared.logprob - naive.logprob).abs().max()
        assert torch.equal(shared.tokens, naive.tokens)
    one_by_one = torch.stack([naive_scores(model, [p], [c]).logprob[0, 0] for p in ids for c in choices])
    assert torch.allclose(shared.logprob.flatten(), one_by_one, atol=1e-4)  # no padding at all


def test_label_scores_add_up_word_probabilities_and_length_normalise():
    from tlscale.fewshot.scoring import ChoiceScores

    scores = ChoiceScores(torch.tensor([[-1.0, -2.0, -6.0]]), torch.tensor([[1.0, 1.0, 3.0]]))
    summed = label_log_scores(scores, [2, 1], "sum")
    assert torch.allclose(summed, torch.tensor([[torch.logaddexp(torch.tensor(-1.0), torch.tensor(-2.0)), -6.0]]))
    assert torch.allclose(label_log_scores(scores, [2, 1], "mean")[0, 1], torch.tensor(-2.0))


def test_zero_shot_is_k_0_on_the_same_path(tmp_path):
    m = method(tmp_path, k=0, seeds=[0])
    result = m.run(0)
    assert all(p.count("Sentiment:") == 1 and p.startswith("Review: eval") for p in result.prompts)
    assert result.metrics["num_examples"] == 12


def test_fewshot_command_writes_per_seed_and_summary_figures(tmp_path):
    spec = write_spec(tmp_path / "fs.yaml", fewshot_spec(tmp_path, calibration="contextual"))
    result = run_cli("fewshot", str(spec))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mean ± std" in result.stdout
    metrics = json.loads((tmp_path / "fewshot" / "metrics.json").read_text())
    accuracies = [metrics["seeds"][s]["accuracy"] for s in ("0", "1")]
    assert metrics["eval"]["accuracy"] == pytest.approx(sum(accuracies) / 2)
    assert metrics["eval"]["accuracy_std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2 ** 0.5)
    assert {"f1_macro", "ece", "per_class", "confusion_matrix"} <= set(metrics["seeds"]["0"])
    assert len((tmp_path / "fewshot" / "predictions-seed1.jsonl").read_text().splitlines()) == 12
    again = run_cli("fewshot", str(spec))
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    side_by_side = run_cli("compare", str(tmp_path / "fewshot"))
    assert side_by_side.returncode == 0 and f"{metrics['eval']['accuracy']:.4f} ±" in side_by_side.stdout
    missing = run_cli("compare", str(tmp_path / "fewshot"), str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no metrics.json" in missing.stderr


@pytest.mark.parametrize("override,message", [
    ({"template": "Review: {text}"}, "exactly one {label}"),
    ({"template": "Review: {txt} {label}"}, "unknown placeholder"),
    ({"verbalizer": {"negative": "bad"}}, "missing ['positive']"),
    ({"method": "setfit", "k": 0}, "expected k >= 1"),
    ({"model": {"name_or_path": "tiny:bert"}}, "is a bert encoder; use method linear_probe or setfit"),
])
def test_fewshot_spec_mistakes_exit_2(tmp_path, override, message):
    raw = fewshot_spec(tmp_path, **{k: v for k, v in override.items() if k != "model"})
    raw["model"].update(override.get("model", {}))
    expect_error(["fewshot", write_spec(tmp_path / "fs.yaml", raw)], message)


def test_qa_prompting_generates_answers_scored_by_squad(tmp_path):
    from tests.conftest import DATA
    from tlscale.data.qa import read_questions

    spec = {"task": "extractive_qa", "output_dir": str(tmp_path / "qa"),
            "model": {"name_or_path": "tiny:gpt2", "max_length": 128},
            "data": {"train_file": str(DATA / "xquad" / "xquad.en.json"), "eval_limit": 4},
            "qa": {"train_articles": 32, "doc_stride": 32},
            "fewshot": {"k": 1, "selection": "random", "seeds": [0, 1], "max_new_tokens": 4,
                        "template": "Question: {question}\nAnswer: {answer}"}}
    result = run_cli("fewshot", str(write_spec(tmp_path / "qa.yaml", spec)))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "qa" / "metrics.json").read_text())
    assert {"exact_match", "f1", "exact_match_std", "f1_std"} <= set(metrics["eval"])
    held_out = {q.question for q in read_questions(DATA / "xquad" / "xquad.en.json") if q.article >= 32}
    for row in map(json.loads, (tmp_path / "qa" / "prompts.jsonl").read_text().splitlines()):
        demo_question = row["prompt"].split("\n")[0].removeprefix("Question: ")
        assert demo_question not in held_out


def test_one_seeds_table_shows_no_spread():
    from rich.console import Console

    from tlscale.fewshot.runner import results_table

    metrics = {"method": "setfit", "model": "m", "task": "text_classification", "fewshot": {"k": 16},
               "eval": {"seeds": 1, "accuracy": 0.7, "accuracy_std": 0.0}, "seeds": {"0": {"accuracy": 0.7}}}
    console = Console(width=200, record=True)
    console.print(results_table(metrics))
    text = console.export_text()
    assert "k=16, 1 seed)" in text and "mean ± std" not in text and "0.7000" in text
