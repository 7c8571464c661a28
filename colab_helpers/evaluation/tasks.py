"""The task catalogue of :func:`~.harness.task_accuracy`, and the local tasks built for lm-evaluation-harness.

Local tasks are made at run time, deterministically (seeded), from text the package ships or the standard library
holds: last-word prediction over sentences of the two other-domain texts (``cloze-gpl3``, ``cloze-pydoc``) and
four-way choices over small hand-written tables of facts (``capitals``, ``antonyms``) and the spelling study's word
list (``first-letter``). :func:`write_local_tasks` writes each as JSONL data and an lm-eval YAML config into a
folder. Hub tasks (``hellaswag``, ``tinyArc``, ...) are lm-eval's own and need the Hugging Face Hub.
"""

from __future__ import annotations

import json
import logging
import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..runtime.hub import hub_reachable, offline_by_env
from .data import other_domain_text, shipped_words

logger = logging.getLogger(__name__)

DEFAULT_SEED = 0
CLOZE_CONTEXT_WORDS = 40  # the words of context before a cloze target, at most: short contexts keep a CPU run quick
CLOZE_MIN_CONTEXT_WORDS = 8  # fewer words than this leave the last word a guess


@dataclass(frozen=True)
class TaskSpec:
    """One task of the catalogue: its name, the accuracy of a random guess (``chance``), what it measures, where its
    items come from, and whether it is built here (``local``) or is lm-eval's own from the hub."""

    name: str
    chance: float
    measures: str
    source: str
    local: bool
    metric: str = "acc"  # the lm-eval metric reported: acc, or acc_norm (per-byte normalised) where that is usual
    needs: str | None = None  # a module the task needs beyond lm-eval (its metric), e.g. tinyBenchmarks

    @property
    def harness_name(self) -> str:
        """The name lm-eval knows the task by: ``colab_<name>`` for local tasks, the name itself for hub tasks."""
        return "colab_" + re.sub(r"\W", "_", self.name) if self.local else self.name


_TINY = "tinyBenchmarks (pip install git+https://github.com/felipemaiapolo/tinyBenchmarks)"
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("cloze-gpl3", 0.0, "last-word prediction in legal prose (greedy match)", "the GNU GPL v3 text shipped "
                 "in the package", True),  # fmt: skip
        TaskSpec("cloze-pydoc", 0.0, "last-word prediction in technical reference (greedy match)", "Python's "
                 "reference documentation (pydoc_data.topics, standard library)", True),  # fmt: skip
        TaskSpec("capitals", 0.25, "world knowledge: a country's capital among 4", "a table in this module", True),
        TaskSpec("antonyms", 0.25, "word meaning: a word's opposite among 4", "a table in this module", True),
        TaskSpec("first-letter", 0.25, "spelling: a word's first letter among 4 (a 135M model is near chance)",
                 "the spelling study's word list (Debian wamerican)", True),  # fmt: skip
        TaskSpec("lambada_openai", 0.0, "last-word prediction in fiction (LAMBADA)", "lm-eval, Hugging Face Hub",
                 False),  # fmt: skip
        TaskSpec("hellaswag", 0.25, "commonsense sentence completion", "lm-eval, Hugging Face Hub", False, "acc_norm"),
        TaskSpec("arc_easy", 0.25, "grade-school science questions", "lm-eval, Hugging Face Hub", False, "acc_norm"),
        TaskSpec("piqa", 0.5, "physical commonsense, 2 solutions", "lm-eval, Hugging Face Hub", False, "acc_norm"),
        TaskSpec("winogrande", 0.5, "pronoun resolution, 2 options", "lm-eval, Hugging Face Hub", False),
        TaskSpec("tinyHellaswag", 0.25, "HellaSwag, 100 items, 10-shot, IRT estimate", "lm-eval, Hugging Face Hub",
                 False, "acc_norm", _TINY),  # fmt: skip
        TaskSpec("tinyArc", 0.25, "ARC-Challenge, 100 items, 25-shot, IRT estimate", "lm-eval, Hugging Face Hub",
                 False, "acc_norm", _TINY),  # fmt: skip
        TaskSpec("tinyWinogrande", 0.5, "WinoGrande, 100 items, 5-shot, IRT estimate", "lm-eval, Hugging Face Hub",
                 False, "acc_norm", _TINY),  # fmt: skip
    )
}
PRESETS: dict[str, tuple[str, ...]] = {
    "offline": ("cloze-gpl3", "cloze-pydoc", "capitals", "antonyms", "first-letter"),
    "standard": ("lambada_openai", "hellaswag", "arc_easy", "piqa", "winogrande"),
    "tiny": ("tinyHellaswag", "tinyArc", "tinyWinogrande"),
}

# Facts for the four-way tasks: well-known countries (as named after "The capital of") and their capitals, and
# common words with one clear opposite. Every answer is distinct, so the other answers make fair distractors.
CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("the United Kingdom", "London"), ("Ireland", "Dublin"), ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"),
    ("Austria", "Vienna"), ("Switzerland", "Bern"), ("Sweden", "Stockholm"), ("Norway", "Oslo"),
    ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Iceland", "Reykjavik"), ("Poland", "Warsaw"),
    ("the Czech Republic", "Prague"), ("Hungary", "Budapest"), ("Greece", "Athens"), ("Russia", "Moscow"),
    ("Ukraine", "Kyiv"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"),
    ("Estonia", "Tallinn"), ("Latvia", "Riga"), ("Lithuania", "Vilnius"), ("Slovakia", "Bratislava"),
    ("Turkey", "Ankara"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Nigeria", "Abuja"), ("Ethiopia", "Addis Ababa"),
    ("Morocco", "Rabat"), ("Ghana", "Accra"), ("Senegal", "Dakar"), ("Algeria", "Algiers"), ("Tunisia", "Tunis"),
    ("Uganda", "Kampala"), ("Zimbabwe", "Harare"), ("Sudan", "Khartoum"), ("Angola", "Luanda"), ("China", "Beijing"),
    ("Japan", "Tokyo"), ("South Korea", "Seoul"), ("North Korea", "Pyongyang"), ("India", "New Delhi"),
    ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("the Philippines", "Manila"), ("Malaysia", "Kuala Lumpur"), ("Cambodia", "Phnom Penh"), ("Laos", "Vientiane"),
    ("Nepal", "Kathmandu"), ("Mongolia", "Ulaanbaatar"), ("Afghanistan", "Kabul"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Syria", "Damascus"), ("Lebanon", "Beirut"), ("Jordan", "Amman"), ("Saudi Arabia", "Riyadh"),
    ("Qatar", "Doha"), ("Kazakhstan", "Astana"), ("Australia", "Canberra"), ("New Zealand", "Wellington"),
    ("Canada", "Ottawa"), ("the United States", "Washington"), ("Mexico", "Mexico City"), ("Cuba", "Havana"),
    ("Jamaica", "Kingston"), ("Argentina", "Buenos Aires"), ("Brazil", "Brasilia"), ("Chile", "Santiago"),
    ("Peru", "Lima"), ("Colombia", "Bogota"), ("Venezuela", "Caracas"), ("Uruguay", "Montevideo"), ("Ecuador", "Quito"),
)  # fmt: skip
ANTONYMS: tuple[tuple[str, str], ...] = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("left", "right"), ("day", "night"),
    ("black", "white"), ("happy", "sad"), ("rich", "poor"), ("young", "old"), ("tall", "short"), ("wet", "dry"),
    ("early", "late"), ("empty", "full"), ("heavy", "light"), ("thick", "thin"), ("wide", "narrow"),
    ("strong", "weak"), ("loud", "quiet"), ("clean", "dirty"), ("cheap", "expensive"), ("true", "false"),
    ("win", "lose"), ("buy", "sell"), ("push", "pull"), ("give", "take"), ("above", "below"), ("inside", "outside"),
    ("before", "after"), ("first", "last"), ("north", "south"), ("east", "west"), ("top", "bottom"), ("front", "back"),
    ("question", "answer"), ("war", "peace"), ("love", "hate"), ("friend", "enemy"), ("alive", "dead"),
    ("male", "female"), ("husband", "wife"), ("king", "queen"), ("boy", "girl"), ("brother", "sister"),
    ("increase", "decrease"), ("maximum", "minimum"), ("positive", "negative"), ("success", "failure"),
    ("arrive", "leave"), ("remember", "forget"), ("accept", "reject"), ("safe", "dangerous"), ("smooth", "rough"),
    ("deep", "shallow"), ("awake", "asleep"), ("possible", "impossible"), ("legal", "illegal"), ("never", "always"),
    ("everything", "nothing"), ("more", "less"), ("begin", "end"), ("enter", "exit"), ("ancient", "modern"),
    ("private", "public"), ("import", "export"), ("input", "output"),
)  # fmt: skip
_CLOZE_TEXTS = {"cloze-gpl3": "gpl-3.0", "cloze-pydoc": "python-docs"}
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def resolve_tasks(tasks: str | Sequence[str]) -> list[TaskSpec]:
    """Return the specs of ``tasks``: a preset (``"offline"``, ``"standard"``, ``"tiny"``), one task name, or a list
    of task names; ValueError naming the unknown name and the choices."""
    if isinstance(tasks, str):
        names = list(PRESETS.get(tasks, (tasks,)))
    elif isinstance(tasks, Sequence) and all(isinstance(name, str) for name in tasks):
        names = list(dict.fromkeys(tasks))
    else:
        raise ValueError(f"tasks must be a preset name or a list of task names, got {tasks!r:.80}; e.g. "
                         "tasks='offline' or tasks=['capitals', 'antonyms']")  # fmt: skip
    if not names:
        raise ValueError("tasks is empty; pass a preset such as 'offline' or some task names, e.g. ['capitals']")
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; choose a preset {sorted(PRESETS)} or tasks from "
                         f"{list(TASKS)}")  # fmt: skip
    return [TASKS[name] for name in names]


def check_hub_tasks(specs: Sequence[TaskSpec]) -> None:
    """Raise ConnectionError naming the fix when some of ``specs`` come from the hub and the hub cannot be had."""
    hub = [spec.name for spec in specs if not spec.local]
    if not hub:
        return
    variable = offline_by_env()
    if variable is None and hub_reachable():
        return
    reason = f"{variable} is set" if variable else "the Hugging Face Hub does not answer"
    raise ConnectionError(
        f"tasks {hub} come from the Hugging Face Hub, which is unreachable here ({reason}); use tasks='offline' "
        f"(built locally: {list(PRESETS['offline'])}), or run on a machine with internet"
        + (f" with {variable} unset" if variable else "")
    )


def _rng(name: str, seed: int) -> random.Random:
    """A generator of its own per task and seed (``hash()`` of a string changes per process; crc32 does not)."""
    return random.Random(zlib.crc32(name.encode()) ^ seed)


def _pick(items: list, limit: int | None, rng: random.Random) -> list:
    """Return up to ``limit`` of ``items`` chosen at random, kept in their order (all of them with None)."""
    if limit is None or limit >= len(items):
        return list(items)
    return [items[i] for i in sorted(rng.sample(range(len(items)), limit))]


def _prose_paragraphs(text: str) -> list[str]:
    """Return the paragraphs of ``text`` that read as prose, each on one line: code, grammar rules and headings
    (every line indented 3 spaces or more, or a rule of ``*`` / ``=``) are left out."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines or all(re.match(r"   ", line) for line in lines) or re.search(r"^[*=\-]{3,}$", block, re.M):
            continue
        if ">>>" in block or "::=" in block:
            continue
        paragraphs.append(" ".join(" ".join(lines).split()))
    return paragraphs


def cloze_items(text: str, *, limit: int | None, seed: int = DEFAULT_SEED, name: str = "cloze") -> list[dict]:
    """Return LAMBADA-style items ``{"context", "target"}`` from ``text``: each sentence of a prose paragraph ending
    in a word of 3 or more letters gives the word as ``target`` and at most :data:`CLOZE_CONTEXT_WORDS` words before
    it (of its paragraph) as ``context``; up to ``limit`` of them, chosen with ``seed``."""
    items = []
    for paragraph in _prose_paragraphs(text):
        for match in re.finditer(r"(?<=[a-z,;)\"'] )([A-Za-z]{3,})[.!?](?=\s|$)", paragraph):
            words = paragraph[: match.start()].split()[-CLOZE_CONTEXT_WORDS:]
            if len(words) >= CLOZE_MIN_CONTEXT_WORDS:
                items.append({"context": " ".join(words), "target": match.group(1)})
    return _pick(items, limit, _rng(name, seed))


def _choice_item(query: str, answer: str, pool: Sequence[str], rng: random.Random) -> dict:
    """Return a four-way item: ``answer`` and 3 distractors from ``pool`` (never the answer) in a random order."""
    choices = [answer, *rng.sample([other for other in pool if other != answer], 3)]
    rng.shuffle(choices)
    return {"query": query, "choices": choices, "label": choices.index(answer)}


def choice_items(task: str, *, limit: int | None, seed: int = DEFAULT_SEED) -> list[dict]:
    """Return the four-way items ``{"query", "choices", "label"}`` of ``task`` (``capitals``, ``antonyms`` or
    ``first-letter``); up to ``limit`` of them, chosen and shuffled with ``seed``."""
    rng = _rng(task, seed)
    if task == "capitals":
        pairs = [(f"The capital of {country} is", capital) for country, capital in CAPITALS]
        pool = [capital for _, capital in CAPITALS]
    elif task == "antonyms":
        pairs = [(f"The opposite of {word} is", opposite) for word, opposite in ANTONYMS]
        pool = [opposite for _, opposite in ANTONYMS]
    elif task == "first-letter":
        words = [word for word in shipped_words() if 4 <= len(word) <= 8]
        pairs = [(f"The word '{word}' starts with the letter", word[0]) for word in _pick(words, limit, rng)]
        pool = list(_LETTERS)
    else:
        raise ValueError(f"no four-way items for task {task!r}; choose 'capitals', 'antonyms' or 'first-letter'")
    return [_choice_item(query, answer, pool, rng) for query, answer in _pick(pairs, limit, rng)]


def task_items(spec: TaskSpec, *, limit: int | None, seed: int = DEFAULT_SEED) -> list[dict]:
    """Return the items of the local task ``spec`` (up to ``limit``, chosen with ``seed``)."""
    if not spec.local:
        raise ValueError(f"task {spec.name!r} is lm-eval's own (from the hub); only local tasks are built here")
    if spec.name in _CLOZE_TEXTS:
        return cloze_items(other_domain_text(_CLOZE_TEXTS[spec.name]), limit=limit, seed=seed, name=spec.name)
    return choice_items(spec.name, limit=limit, seed=seed)


def _task_yaml(spec: TaskSpec, data: Path, cache: Path) -> str:
    """Return the lm-eval YAML of local task ``spec`` reading its JSONL ``data`` (``datasets`` caches in ``cache``)."""
    head = {
        "task": spec.harness_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(cache)},
        "test_split": "test",
    }
    if spec.name in _CLOZE_TEXTS:
        # a loglikelihood task puts no delimiter between text and target (multiple_choice puts " "): the space is ours
        body = {"output_type": "loglikelihood", "doc_to_text": "{{context}}", "doc_to_target": "{{' ' + target}}"}
    else:
        body = {"output_type": "multiple_choice", "doc_to_text": "{{query}}", "doc_to_choice": "{{choices}}",
                "doc_to_target": "label"}  # fmt: skip
    metrics = {"metric_list": [{"metric": spec.metric, "aggregation": "mean", "higher_is_better": True}],
               "metadata": {"version": 1}}  # fmt: skip
    # JSON is YAML: no YAML writer needed, and every string is quoted (no '{{' or ':' surprises)
    return "\n".join(f"{key}: {json.dumps(value)}" for key, value in {**head, **body, **metrics}.items()) + "\n"


def write_local_tasks(specs: Sequence[TaskSpec], folder: str | Path, *, limit: int | None,
                      seed: int = DEFAULT_SEED) -> dict[str, int]:  # fmt: skip
    """Write each local task of ``specs`` into ``folder`` as ``<name>.jsonl`` (its items) and ``<name>.yaml`` (its
    lm-eval config); return ``{task name: items written}``. Hub tasks in ``specs`` are skipped."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for spec in (spec for spec in specs if spec.local):
        items = task_items(spec, limit=limit, seed=seed)
        data = folder / f"{spec.harness_name}.jsonl"
        data.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
        (folder / f"{spec.harness_name}.yaml").write_text(_task_yaml(spec, data.resolve(), folder / "cache"),
                                                          encoding="utf-8")  # fmt: skip
        written[spec.name] = len(items)
        logger.debug("task %s: %d items in %s", spec.name, len(items), data)
    return written
