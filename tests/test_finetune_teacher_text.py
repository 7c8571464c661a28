"""What recovery trains on: `recovery_texts` takes the first `samples` shipped teacher texts, or says why it cannot."""

from __future__ import annotations

import pytest

from colab_helpers.finetune import recovery_texts
from colab_helpers.finetune import teacher_text
from colab_helpers.finetune.teacher_text import shipped_generated

SMOLLM2 = "smollm2-135m-instruct"
PARAGRAPHS = [f"paragraph {i} " + "word " * 80 for i in range(400)]  # each longer than 300 characters


def test_generated_text_is_the_first_samples_of_the_shipped_sample() -> None:
    shipped = shipped_generated(SMOLLM2)
    assert shipped is not None and len(shipped) >= 96 and all(text.strip() for text in shipped)
    assert recovery_texts("generated", PARAGRAPHS, SMOLLM2, samples=5) == shipped[:5]
    assert recovery_texts("generated", PARAGRAPHS, SMOLLM2, samples=len(shipped)) == shipped
    assert recovery_texts("generated", PARAGRAPHS, SMOLLM2) == shipped  # no count: every shipped text


def test_without_a_count_a_model_with_no_shipped_text_gets_the_default_number_sampled(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    asked = []

    def sampled(teacher: object, tokenizer: object, samples: int) -> list[str]:
        asked.append(samples)
        return [f"text {i}" for i in range(samples)]

    monkeypatch.setattr(teacher_text, "teacher_texts", sampled)
    texts = recovery_texts("generated", PARAGRAPHS, "someone/other-model", teacher=object(), tokenizer=object())
    assert asked == [teacher_text.SAMPLED_BY_DEFAULT] and len(texts) == teacher_text.SAMPLED_BY_DEFAULT


def test_the_mix_puts_one_dataset_paragraph_after_each_teacher_text() -> None:
    mix = recovery_texts("mix", PARAGRAPHS, SMOLLM2, samples=7)
    assert mix[0::2] == shipped_generated(SMOLLM2)[:7] and mix[1::2] == PARAGRAPHS[:7]
    assert recovery_texts("dataset", PARAGRAPHS, SMOLLM2) == PARAGRAPHS


@pytest.mark.parametrize(
    ("model", "samples", "message"),
    [(SMOLLM2, 10**6, "shipped texts for model 'smollm2-135m-instruct', samples=1000000 asked"),
     ("someone/other-model", 4, "no shipped teacher text for model 'someone/other-model'"),
     (SMOLLM2, 0, "samples must be an integer >= 1 or None \\(every shipped text\\), got 0")],
)  # fmt: skip
def test_asking_for_more_teacher_text_than_shipped_without_a_teacher_names_the_fix(model: str, samples: int,
                                                                                   message: str) -> None:
    with pytest.raises(ValueError, match=message):
        recovery_texts("generated", PARAGRAPHS, model, samples=samples)
    with pytest.raises(ValueError, match="one of"):
        recovery_texts("teacher", PARAGRAPHS, model)
