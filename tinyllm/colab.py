"""Links from the book to the exercise notebooks, in Colab and on GitHub.

The repository is set in ``_config.yml``; it is repeated here because the
chapters also run in Colab, where there is no ``_config.yml`` to read. A test
keeps the two equal.
"""

from __future__ import annotations

REPOSITORY = "https://github.com/llm-foundations/llm-foundations"
BRANCH = "main"

EXERCISES = {
    "01_tokenization": "Byte-level BPE: train_bpe, bpe_encode, bpe_decode",
    "02_embeddings": "embedding_lookup and the sinusoidal positional encoding",
    "03_softmax": "A stable softmax, cross-entropy and perplexity",
    "04_attention": "Scaled dot-product attention and multi-head attention",
    "05_transformer_layer": "Layer norm, the feed-forward network, the pre-norm block",
    "06_tiny_gpt": "TinyGPT, top-k / top-p filtering, sampling and generation",
    "07_modern_block": "RMSNorm, rotary positions, SwiGLU, grouped-query attention, the modern block",
    "08_fast_generation": "The KV cache, the causal mask over it, cached generation, beam search",
    "09_training": "The training loop's parts: AdamW, the warm-up + cosine schedule, gradient clipping",
    "10_post_training": "The answer-only fine-tuning loss, an answer's log-probability, LoRA, the DPO loss",
    "11_inference": "int8 and group-wise int4 quantization, the speculative accept/reject step and its loop",
}


def colab_url(path: str) -> str:
    """Open ``path`` (a notebook in the repository) in Google Colab."""
    owner_repo = REPOSITORY.split("github.com/", 1)[1]
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{BRANCH}/{path}"


def exercise_path(assignment: str) -> str:
    if assignment not in EXERCISES:
        raise ValueError(f"unknown exercise {assignment!r}; known: {', '.join(EXERCISES)}")
    return f"exercises/{assignment}/{assignment}.ipynb"


def exercise_markdown(*assignments: str) -> str:
    """A Markdown list: each exercise with its Colab and download links."""
    lines = []
    for assignment in assignments or tuple(EXERCISES):
        path = exercise_path(assignment)
        github = f"{REPOSITORY}/blob/{BRANCH}/{path}"
        lines.append(f"- **{assignment}**: {EXERCISES[assignment]}. [Open in Colab]({colab_url(path)}) "
                     f"or [view on GitHub]({github}).")
    return "\n".join(lines)


def exercise_links(*assignments: str):
    """Display the links in a notebook (the book renders the Markdown output)."""
    from IPython.display import Markdown

    return Markdown(exercise_markdown(*assignments))
