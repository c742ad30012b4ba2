"""Summarise an atom's captions with a language model.

The prompt and the answer format are those of "Disentangling Concepts and Constructing
Human-Compatible Explanations for Image Embeddings" (Valentin et al.).

A *summariser* is any callable ``(system_prompt, user_message) -> str``. Two are built in:

- :class:`OpenAIChat`: any OpenAI-compatible chat endpoint (``POST {base_url}/chat/completions``)
  over the standard library's urllib; the key is read from an environment variable.
- :class:`LocalLM`: a Hugging Face causal language model from a folder, a hub name, or a GGUF
  file (transformers reads GGUF when the ``gguf`` package is installed; the ``llm`` extra).

:func:`summarize_rows` sends each atom's top captions with that paper's system prompt, parses the
answer as JSON with ``themes`` and ``summary``, validates it, retries malformed answers, caches
good ones by (summariser, prompt, captions) in a JSON file, and runs atoms in a thread pool with
a timeout. A failing atom gets ``status="error: …"``; the others are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from daskdict.errors import InvalidInputError
from daskdict.io import formats
from daskdict.validation import check_positive_int

# the system prompt of the concept paper (Valentin et al.), verbatim
SYSTEM_PROMPT = (
    "This is an IQ test. The task is to find the underlying common themes in a series of image "
    "captions. Find the three to five main themes. Answer only in json format, with the fields "
    "'themes' containing only the themes, and 'summary' containing the summary of each theme. "
    "Order the themes by how often they occur.")


class SummaryError(ValueError):
    """A summariser's answer could not be used (not JSON, or not themes and a summary)."""


class OpenAIChat:
    """A summariser over an OpenAI-compatible chat-completions endpoint.

    Parameters
    ----------
    base_url : str
        E.g. ``"https://api.openai.com/v1"`` or ``"http://127.0.0.1:8000/v1"``.
    model : str
        The model name the endpoint expects.
    api_key_env : str, default="OPENAI_API_KEY"
        Environment variable holding the key; no ``Authorization`` header when it is unset.
        The key is sent over https, and over plain http only to this machine (127.0.0.1,
        localhost): never in clear text to another host.
    timeout : float, default=60.0
        Seconds per request.
    temperature : float, default=0.0
    max_tokens : int, default=400
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, temperature: float = 0.0, max_tokens: int = 400):
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.temperature = temperature
        self.max_tokens = max_tokens

    @property
    def name(self) -> str:
        return f"openai:{self.base_url}:{self.model}"

    def __call__(self, system: str, user: str) -> str:
        body = json.dumps({
            "model": self.model, "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": user}]}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key and _key_may_travel(self.base_url):
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(f"{self.base_url.rstrip('/')}/chat/completions",
                                         data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            with exc:  # the error holds the open response
                detail = exc.read()[:200].decode("utf-8", "replace")
            raise SummaryError(f"HTTP {exc.code} from {self.base_url}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise SummaryError(f"no answer from {self.base_url}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise SummaryError(f"{self.base_url} did not answer JSON: {exc}") from exc
        try:
            return str(payload["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as exc:
            raise SummaryError(f"unexpected chat answer from {self.base_url}: "
                               f"{str(payload)[:200]}") from exc


class LocalLM:
    """A summariser running a Hugging Face causal LM on this machine (greedy decoding).

    Parameters
    ----------
    model : str or path
        A model folder or hub name, or a ``.gguf`` file (needs the ``gguf`` package).
    max_new_tokens : int, default=200
    device : str, default="cpu"
    answer_prefix : str, default='{"themes": ["'
        Text the answer is made to start with (and that is put back in front of it): it steers
        small or base models into the JSON the parser expects.

    The model is loaded at the first call, not in the constructor; calls are serialised.
    """

    def __init__(self, model: str | os.PathLike, *, max_new_tokens: int = 200,
                 device: str = "cpu", answer_prefix: str = '{"themes": ["'):
        self.answer_prefix = answer_prefix
        self.model = str(model)
        self.max_new_tokens = max_new_tokens
        self.device = device
        self._lock = threading.Lock()
        self._loaded = None

    @property
    def name(self) -> str:
        return f"local:{Path(self.model).name}"

    def _load(self):
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ImportError("LocalLM needs transformers and torch: pip install "
                              "'daskdict[embed,llm]'") from exc
        path = Path(self.model)
        kwargs: dict[str, Any] = {}
        source = self.model
        if path.suffix == ".gguf":
            if not path.exists():
                raise InvalidInputError(f"No GGUF file at {self.model!r}.")
            source, kwargs = str(path.parent), {"gguf_file": path.name}
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs).to(self.device)
        model.eval()
        return tokenizer, model

    def prompt(self, tokenizer, model_type: str, system: str, user: str) -> str:
        """The model's chat format (its template, Gemma's turns, or plain text)."""
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                [{"role": "system", "content": system}, {"role": "user", "content": user}],
                tokenize=False, add_generation_prompt=True)
        if model_type.startswith("gemma"):  # GGUF files often carry no template
            return (f"<start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n"
                    "<start_of_turn>model\n")
        return f"{system}\n\n{user}\n\nAnswer:\n"

    def __call__(self, system: str, user: str) -> str:
        import torch

        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            tokenizer, model = self._loaded
            text = self.prompt(tokenizer, model.config.model_type, system, user)
            text += self.answer_prefix
            inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not text.startswith(
                tokenizer.bos_token or "\0")).to(self.device)
            with torch.no_grad():
                output = model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                        do_sample=False)
            return self.answer_prefix + tokenizer.decode(
                output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_summary(text: str, top_n: int = 5) -> tuple[list[str], str]:
    """Themes and summary from a model's answer (JSON, possibly inside a code fence).

    ``themes`` must be a non-empty list of strings (or of objects with a name); ``summary`` may
    be a string, a list or an object (joined into one string).

    Raises
    ------
    SummaryError
        When the answer holds no such JSON object.
    """
    match = _JSON_OBJECT.search(text or "")
    if not match:
        raise SummaryError(f"no JSON object in the answer: {text[:120]!r}")
    try:
        payload = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise SummaryError(f"malformed JSON in the answer: {exc}") from exc
    if not isinstance(payload, dict):
        raise SummaryError("the answer's JSON is not an object")
    themes = payload.get("themes")
    if isinstance(themes, str):
        themes = [themes]
    if not isinstance(themes, list) or not themes:
        raise SummaryError("the answer has no list of 'themes'")
    names = []
    for theme in themes:
        if isinstance(theme, dict):
            theme = theme.get("theme") or theme.get("name") or next(iter(theme.values()), "")
        if not isinstance(theme, str) or not theme.strip():
            raise SummaryError(f"a theme is not a non-empty string: {theme!r}")
        names.append(theme.strip())
    summary = payload.get("summary", "")
    if isinstance(summary, list):
        summary = " ".join(str(part) for part in summary)
    elif isinstance(summary, dict):
        summary = " ".join(f"{key}: {value}" for key, value in summary.items())
    return names[:top_n], str(summary)


def user_message(captions: list[str]) -> str:
    """The captions as a markdown list, one per line."""
    return "Image captions:\n" + "\n".join(f"- {c}" for c in captions)


def _key_may_travel(base_url: str) -> bool:
    """Whether an API key may be sent to ``base_url`` (https, or http on this machine)."""
    parts = urllib.parse.urlsplit(base_url)
    return parts.scheme == "https" or parts.hostname in ("127.0.0.1", "localhost", "::1")


class JSONCache:
    """A thread-safe JSON file of answers, keyed by a hash.

    New answers are written every ``SAVE_EVERY`` entries or ``SAVE_SECONDS`` seconds, and by
    :meth:`flush` (rewriting the file after every entry made 3,072 atoms cost gigabytes of
    writes); the file is swapped in by rename, so a crash leaves the previous version.
    """

    SAVE_EVERY = 64
    SAVE_SECONDS = 10.0

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._entries: dict = {}
        self._unsaved = 0
        self._saved_at = time.monotonic()
        if self.path is not None:
            formats.check_writable(self.path)
        if self.path and self.path.exists():
            if not self.path.is_file():
                raise InvalidInputError(f"The LLM cache {str(self.path)!r} is a folder, not a "
                                        "JSON file of answers.")
            try:
                self._entries = json.loads(self.path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InvalidInputError(f"The LLM cache {self.path} is not JSON: {exc}. "
                                        "Delete it to start a new one.") from exc
            # answers are keyed by hash; a dict with a daskdict header is another object
            if not isinstance(self._entries, dict) or formats.HEADER_KEY in self._entries:
                raise InvalidInputError(
                    f"{str(self.path)!r} is not an LLM cache (a JSON object of answers); it is "
                    "never written over. Pass another cache path.")

    def get(self, key: str):
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, value) -> None:
        with self._lock:
            self._entries[key] = value
            self._unsaved += 1
            if (self._unsaved >= self.SAVE_EVERY
                    or time.monotonic() - self._saved_at > self.SAVE_SECONDS):
                self._save()

    def flush(self) -> None:
        with self._lock:
            if self._unsaved:
                self._save()

    def _save(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps(self._entries, indent=1), encoding="utf-8")
            os.replace(tmp, self.path)
        self._unsaved = 0
        self._saved_at = time.monotonic()


def cache_key(summarizer_name: str, system: str, captions: list[str], top_n: int) -> str:
    digest = hashlib.sha256()
    for part in (summarizer_name, system, str(top_n), *captions):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def summarize_one(summarizer, system: str, captions: list[str], top_n: int,
                  n_retries: int) -> dict:
    """Ask, parse and validate; retry a malformed answer up to ``n_retries`` times."""
    errors = []
    for attempt in range(n_retries + 1):
        try:
            themes, summary = parse_summary(summarizer(system, user_message(captions)), top_n)
            return {"themes": themes, "summary": summary, "attempts": attempt + 1}
        except SummaryError as exc:
            errors.append(str(exc))
    raise SummaryError(f"{n_retries + 1} attempts failed; last: {errors[-1]}")


def summarize_rows(rows: list[dict], *, top_n: int, meta: dict, summarizer=None,
                   system_prompt: str = SYSTEM_PROMPT, n_captions: int | None = None,
                   cache: str | os.PathLike | None = None, max_workers: int = 4,
                   timeout: float = 120.0, n_retries: int = 2) -> None:
    """Fill the themes and summary of each active row from its top captions, in place.

    Parameters
    ----------
    rows : list of dict
        Rows of :func:`daskdict.explain` (``top_captions`` and ``status`` are read).
    summarizer : callable ``(system, user) -> str``
        E.g. :class:`OpenAIChat` or :class:`LocalLM`.
    system_prompt : str, default: the concept paper's prompt (:data:`SYSTEM_PROMPT`)
    n_captions : int, optional
        Captions sent per atom (default: all top captions, duplicates removed).
    cache : path, optional
        JSON file of answers keyed by summariser, prompt and captions.
    max_workers : int, default=4
        Atoms summarised at once.
    timeout : float, default=120.0
        Seconds to wait for one atom's answer (its retries included).
    n_retries : int, default=2
        Further attempts after a malformed answer.
    """
    if summarizer is None or not callable(summarizer):
        raise InvalidInputError(
            "method='llm' needs summarizer=: a callable (system, user) -> str such as "
            "daskdict.OpenAIChat(base_url, model) or daskdict.LocalLM(path).")
    max_workers = check_positive_int("max_workers", max_workers)
    n_retries = check_positive_int("n_retries", n_retries, minimum=0)
    name = getattr(summarizer, "name", type(summarizer).__name__)
    meta.update(summarizer=name, system_prompt=system_prompt, n_retries=n_retries)
    store = JSONCache(cache)
    started: dict[int, float] = {}

    def run(index: int, captions: list[str]) -> dict:
        started[index] = time.monotonic()
        return summarize_one(summarizer, system_prompt, captions, top_n, n_retries)

    pending = {}
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="daskdict-llm")
    try:
        for index, row in enumerate(rows):
            if row["status"] != "ok":
                continue
            captions = list(dict.fromkeys(row["top_captions"]))[:n_captions]
            if not captions:
                row["status"] = "no captions"
                continue
            key = cache_key(name, system_prompt, captions, top_n)
            cached = store.get(key)
            if cached is not None:
                _fill(row, cached)
                continue
            pending[index] = (key, pool.submit(run, index, captions))
        _collect(rows, pending, started, store, timeout, max_workers)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        store.flush()


def _collect(rows: list[dict], pending: dict, started: dict[int, float], store: JSONCache,
             timeout: float, max_workers: int) -> None:
    """Fill each row from its answer as it comes; mark the rows whose answer does not come."""
    # an atom's timeout runs from when a thread starts it; a summariser that never returns
    # keeps its thread, so the whole run also ends by this deadline, and atoms still
    # queued then are marked rather than waited for
    deadline = time.monotonic() + timeout * (1 + -(-len(pending) // max_workers))
    while pending:
        wait([future for _, future in pending.values()], timeout=0.1,
             return_when=FIRST_COMPLETED)
        now = time.monotonic()
        for index, (key, future) in list(pending.items()):
            if future.done():
                del pending[index]
                try:
                    answer = future.result()
                except Exception as exc:  # any summariser failure marks this atom only
                    rows[index]["status"] = f"error: {exc}"
                    continue
                store.put(key, answer)
                _fill(rows[index], answer)
            elif index in started and now - started[index] > timeout:
                del pending[index]  # the thread is left to finish; its answer is dropped
                rows[index]["status"] = f"error: no answer within {timeout:g} s"
            elif now > deadline:
                del pending[index]
                rows[index]["status"] = ("error: not started: the summariser's threads "
                                         "were all taken by answers that never came")


def _fill(row: dict, answer: dict) -> None:
    row["themes"] = list(answer["themes"])
    row["theme_scores"] = [float("nan")] * len(row["themes"])
    row["summary"] = answer["summary"]
