"""Generation metrics (medmerge.generation.metrics): worked examples, offline WordNet/BERTScore,
the composite and its local ``evaluate`` module."""

from __future__ import annotations

import math
import socket
from statistics import fmean

import pytest

from medmerge.errors import MedmergeError
from medmerge.generation import metrics as M

SIX = ("bleu", "meteor", "rouge1", "rouge2", "rougeL", "bertscore_f1")

# >= 4 tokens each (BLEU needs 4-grams), no repeated words
IDENTICAL = ["the patient has a fever", "no acute distress noted today."]

PREDS = [
    "the patient has a mild fever",
    "fever and cough in the patient",
    "the physician examined her carefully",
]
REFS = [
    "the patient has a high fever today",
    "the patient has fever and cough",
    "the doctor examined her carefully",
]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")


def test_identical_strings(no_network):
    assert M.bleu(IDENTICAL, IDENTICAL) == pytest.approx(1.0, abs=1e-12)
    assert M.rouge(IDENTICAL, IDENTICAL) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    bs = M.bertscore(IDENTICAL, IDENTICAL)
    for k in ("precision", "recall", "f1"):
        assert abs(bs[k] - 1.0) < 1e-6, (k, bs[k])
    assert bs["model"] == M.DEFAULT_BERTSCORE_MODEL and bs["num_layers"] == 6
    # METEOR is NOT 1 for identical texts. NLTK: P = R = 1, Fmean = P*R/(0.9P + 0.1R) = 1, all
    # m tokens match in ONE chunk, penalty = gamma*(chunks/matches)**beta = 0.5*(1/m)**3, score
    # = 1 - 0.5/m**3. wordpunct tokens: "the patient has a fever" -> m=5 -> 0.996;
    # "no acute distress noted today." -> 6 tokens ("." is one) -> 1 - 0.5/216 = 0.99768518...;
    # mean = 0.99684259259...
    expected = fmean([1 - 0.5 / 5**3, 1 - 0.5 / 6**3])
    assert M.meteor(IDENTICAL, IDENTICAL) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.9968425925925926, abs=1e-15)


def test_rouge_worked_example():
    # pred "fever and cough in the patient"  (6 tokens)
    # ref  "the patient has fever and cough" (6 tokens); stemming changes none of these words.
    # ROUGE-1: common unigrams fever, and, cough, the, patient = 5 -> P = R = 5/6 -> F = 5/6.
    # ROUGE-2: pred bigrams {fever and, and cough, cough in, in the, the patient} (5),
    #          ref  bigrams {the patient, patient has, has fever, fever and, and cough} (5),
    #          common 3 -> P = R = 3/5 -> F = 0.6.
    # ROUGE-L: LCS = "fever and cough" (3; "the patient" is only 2) -> P = R = 3/6 -> F = 0.5.
    r = M.rouge([PREDS[1]], [REFS[1]])
    assert r["rouge1"] == pytest.approx(5 / 6, abs=1e-12)
    assert r["rouge2"] == pytest.approx(0.6, abs=1e-12)
    assert r["rougeL"] == pytest.approx(0.5, abs=1e-12)
    # averaged over pairs: with an identical second pair each F-measure is (x + 1) / 2
    assert M.rouge((PREDS[1],), (REFS[1],)) == r  # any iterable of strings
    r2 = M.rouge([PREDS[1], "a b c"], [REFS[1], "a b c"])
    assert r2 == pytest.approx({"rouge1": (5 / 6 + 1) / 2, "rouge2": 0.8, "rougeL": 0.75})


def test_bleu_worked_examples():
    # hyp "the patient has a mild fever" (c = 6), ref "the patient has a high fever today" (r = 7)
    # clipped n-gram precisions:
    #   p1 = 5/6 (the, patient, has, a, fever)       p2 = 3/5 (the patient, patient has, has a)
    #   p3 = 2/4 (the patient has, patient has a)     p4 = 1/3 (the patient has a)
    # BP = exp(1 - r/c) = exp(-1/6) = 0.846482; geometric mean = (5/6*3/5*2/4*1/3)**(1/4)
    #    = (1/12)**(1/4) = 0.537285; BLEU = 0.454802
    expected = math.exp(1 - 7 / 6) * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert expected == pytest.approx(0.4548019047, abs=1e-9)
    assert M.bleu([PREDS[0]], [REFS[0]]) == pytest.approx(expected, rel=1e-12)
    # exp smoothing: hyp "the patient has fever" vs ref "the patient is febrile" (c = r = 4):
    #   p1 = 2/4, p2 = 1/3, p3 = 0/2 -> 1/(2*2) = 1/4, p4 = 0/1 -> 1/(4*1) = 1/4, BP = 1
    #   BLEU = (1/2 * 1/3 * 1/4 * 1/4)**(1/4) = (1/96)**(1/4) = 0.319472
    smoothed = M.bleu(["the patient has fever"], ["the patient is febrile"])
    assert smoothed == pytest.approx((1 / 96) ** 0.25, rel=1e-12)


def test_meteor_uses_offline_wordnet(no_network):
    import nltk
    from nltk.corpus.util import LazyCorpusLoader

    ref = ["the doctor examined her carefully"]
    # "physician" matches "doctor" only through WordNet (synset doctor.n.01; no shared stem):
    # 5/5 matches in one chunk -> 1 - 0.5/5**3 = 0.996
    synonym = M.meteor(["the physician examined her carefully"], ref)
    # "banana" matches nothing: P = R = 4/5, Fmean = 0.8, chunks "the" | "examined her
    # carefully" = 2 -> penalty 0.5*(2/4)**3 = 0.0625 -> 0.8 * 0.9375 = 0.75
    unrelated = M.meteor(["the banana examined her carefully"], ref)
    assert synonym == pytest.approx(0.996, abs=1e-12)
    assert unrelated == pytest.approx(0.75, abs=1e-12)

    wn = M.wordnet()
    assert wn.get_version() == "3.0"
    assert "physician" in wn.synset("doctor.n.01").lemma_names()
    # the generated index.sense agrees with NLTK's own sense keys (incl. an adjective satellite)
    for lemma in wn.synset("doctor.n.01").lemmas() + wn.synsets("huge")[0].lemmas():
        assert wn.lemma_from_key(lemma.key()) == lemma
    assert wn.synsets("huge")[0].lemmas()[0].key() == "huge%5:00:01:large:00"
    # Open Multilingual Wordnet is never loaded for English
    assert type(wn._omw_reader) is LazyCorpusLoader
    # nltk.corpus.wordnet resolves too (our nltk_data directory is on nltk.data.path)
    assert str(M.nltk_data_dir()) in nltk.data.path
    assert nltk.corpus.wordnet.synsets("febrile")


def test_missing_wordnet_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMERGE_WORDNET_DIR", str(tmp_path))
    with pytest.raises(MedmergeError, match="WordNet 3.0 database not found") as e:
        M.meteor(["a b"], ["a b"])
    msg = str(e.value)
    assert str(tmp_path) in msg and "data.noun" in msg and "apt-get install wordnet-base" in msg


def test_composite_is_mean_of_six_and_evaluate_module_matches(no_network):
    c = M.composite(PREDS, REFS)
    assert set(c) == set(SIX) | {"composite", "bertscore_model", "bertscore_layer"}
    for k in SIX:
        assert 0.0 <= c[k] <= 1.0, (k, c[k])
    assert c["composite"] == pytest.approx(sum(c[k] for k in SIX) / 6, abs=1e-15)
    assert c["bertscore_model"] == M.DEFAULT_BERTSCORE_MODEL and c["bertscore_layer"] == 6
    # the parts are the stand-alone metrics
    assert c["bleu"] == M.bleu(PREDS, REFS)
    assert c["meteor"] == M.meteor(PREDS, REFS)
    assert {k: c[k] for k in ("rouge1", "rouge2", "rougeL")} == M.rouge(PREDS, REFS)
    assert c["bertscore_f1"] == pytest.approx(M.bertscore(PREDS, REFS)["f1"], abs=1e-9)
    # METEOR of the third pair is the worked 0.996 above
    assert M.meteor(PREDS[2:], REFS[2:]) == pytest.approx(0.996, abs=1e-12)

    metric = M.load_composite_metric()
    assert type(metric).__name__ == "ClinicalComposite"
    via_evaluate = metric.compute(predictions=PREDS, references=REFS)
    assert set(via_evaluate) == set(c)
    for k, v in c.items():
        if isinstance(v, float):
            assert via_evaluate[k] == pytest.approx(v, abs=1e-9), k
        else:
            assert via_evaluate[k] == v, k


def test_bertscore_options_and_empty_text(no_network):
    path = M.default_bertscore_model_path()
    bs = M.bertscore(PREDS[:1], REFS[:1], model_path=path, num_layers=3)
    assert bs["model"] == str(path.resolve()) and bs["num_layers"] == 3
    assert bs["f1"] != pytest.approx(M.bertscore(PREDS[:1], REFS[:1])["f1"], abs=1e-6)
    # an empty prediction scores 0 (bert_score's rule), the other pair is scored normally
    one = M.bertscore([PREDS[1]], [REFS[1]])["f1"]
    both = M.bertscore(["", PREDS[1]], [REFS[0], REFS[1]])["f1"]
    assert both == pytest.approx(one / 2, abs=1e-6)
    c = M.composite(["   "], ["the patient has a fever"])
    assert c["bertscore_f1"] == 0.0 and c["meteor"] == 0.0 and c["rouge1"] == 0.0


@pytest.mark.parametrize(
    "preds, refs, match",
    [
        (["a"], ["a", "b"], "differ in length"),
        ([], [], "empty"),
        (["a", None], ["a", "b"], r"predictions\[1\] must be a string"),
        (["a"], [3], r"references\[0\] must be a string"),
        ("a b c", "a b c", "must be a list of strings"),
        (["a"], None, "must be a list of strings"),
        ({"a"}, {"a"}, "must be a list of strings"),
    ],
)
def test_bad_input(preds, refs, match):
    for fn in (M.composite, M.bleu, M.rouge, M.meteor, M.bertscore):
        with pytest.raises(ValueError, match=match):
            fn(preds, refs)


def test_bertscore_scorer_loaded_once_and_equal_to_stock_score(no_network, monkeypatch):
    """The encoder is loaded once per (model, layer, device) in a process, and the cached scorer gives
    exactly what ``bert_score.score`` (which loads it on every call) gives."""
    import bert_score
    import bert_score.scorer as scorer_module

    from medmerge.generation.metrics import embedding

    path = str(M.default_bertscore_model_path())
    P, R, F = bert_score.score(PREDS, REFS, model_type=path, num_layers=6, idf=False,
                               rescale_with_baseline=False, device="cpu", verbose=False)
    embedding._scorer.cache_clear()
    loads = []
    real = scorer_module.get_model
    monkeypatch.setattr(scorer_module, "get_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    first = M.bertscore(PREDS, REFS, device="cpu")
    second = M.bertscore(PREDS[:2], REFS[:2], device="cpu")
    assert len(loads) == 1
    assert first["f1"] == pytest.approx(float(F.mean()), abs=1e-7)
    assert first["precision"] == pytest.approx(float(P.mean()), abs=1e-7)
    assert second["recall"] == pytest.approx(float(R[:2].mean()), abs=1e-7)
    M.bertscore(PREDS[:1], REFS[:1], device="cpu", num_layers=3)
    assert len(loads) == 2   # another layer is another scorer
