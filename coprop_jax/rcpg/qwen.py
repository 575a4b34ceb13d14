"""Qwen2-Audio prompting for control points (Table 2b: 1-step, 3-step, RCPG).

Runs through Hugging Face transformers (`Qwen2AudioForConditionalGeneration` +
`Qwen2AudioProcessor`). Conversations are rendered with the processor's chat template; the audio
is in the first user turn only, later turns append the assistant's reply and a text-only user
turn (REFERENCE section 6). Each video yields a record dict (see `QwenPrompter.run`).

Prompts (templates/prompts.json): Q1 `describe`, Q2 `category`, Q3 `list`, whose second and third
sentences are the paper's instruction (section 3.2) verbatim with the frame count filled in
("... evenly divided into ten frames ... from the first frame to the tenth frame ..."). 3step
asks Q1, Q2, Q3 in three turns; rcpg puts the retrieved examples D_q before Q3; 1step asks the
same three texts in ONE turn (Table 2b: "when the content is identical").
"""
from __future__ import annotations

import importlib.resources
import json
import logging
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from coprop_jax.rcpg import core

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
METHODS = ("1step", "3step", "rcpg")
TEMPLATE_KEYS = ("version", "system", "describe", "category", "list", "examples_header",
                 "example_line")
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORD = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
        "nine": "ninth", "twelve": "twelfth"}


def number_words(n: int) -> Tuple[str, str]:
  """n -> (cardinal, ordinal) in English words for 1..99 ("ten", "tenth"; "twenty-one",
  "twenty-first"); digits beyond ("120", "120th")."""
  if not 1 <= n <= 99:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return str(n), f"{n}{suffix}"
  if n < 20:
    card = _ONES[n]
    parts = [card]
  else:
    parts = [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    card = "-".join(parts)
  last = parts[-1]
  if last in _ORD:
    o = _ORD[last]
  elif last.endswith("y"):
    o = last[:-1] + "ieth"
  else:
    o = last + "th"
  return card, "-".join(parts[:-1] + [o])


def prompt_fields(num_frames: int) -> Dict[str, object]:
  """Template placeholders for a clip of `num_frames` frames: T, T_words, T_ordinal."""
  card, ordinal = number_words(int(num_frames))
  return {"T": int(num_frames), "T_words": card, "T_ordinal": ordinal}


def one_step_text(templates: Dict[str, str], num_frames: int) -> str:
  """The 1-step prompt: the 3-step prompt's three texts in one turn (same content)."""
  kw = prompt_fields(num_frames)
  return " ".join(templates[k].format(**kw) for k in ("describe", "category", "list"))


def resolve_device(device: str) -> str:
  """rcpg.device -> a torch device string: "auto" = "cuda" when torch sees a GPU, else "cpu".
  Raises ValueError naming rcpg.device for an unknown string or an unavailable CUDA device."""
  import torch
  if device == "auto":
    return "cuda" if torch.cuda.is_available() else "cpu"
  try:
    dev = torch.device(device)
  except (RuntimeError, TypeError) as e:
    raise ValueError(f"rcpg.device={device!r}: not a torch device string ({e}); use \"auto\", "
                     "\"cpu\", \"cuda\" or \"cuda:N\"") from e
  if dev.type == "cuda":
    if not torch.cuda.is_available():
      raise ValueError(f"rcpg.device={device!r}: torch sees no CUDA device on this machine; use "
                       "rcpg.device=auto or cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
      raise ValueError(f"rcpg.device={device!r}: only {torch.cuda.device_count()} CUDA devices")
  return device


def load_templates(path: str = "") -> Dict[str, str]:
  """Prompt templates: `path` (JSON) or the packaged templates/prompts.json. Checks the keys."""
  if path:
    with open(path) as f:
      text, where = f.read(), path
  else:
    text = importlib.resources.files("coprop_jax.rcpg").joinpath("templates/prompts.json").read_text()
    where = "coprop_jax/rcpg/templates/prompts.json"
  try:
    t = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"prompt templates {where}: not valid JSON ({e})") from e
  if not isinstance(t, dict):
    raise ValueError(f"prompt templates {where}: expected a JSON object of {list(TEMPLATE_KEYS)}")
  missing = [k for k in TEMPLATE_KEYS if k not in t]
  unknown = [k for k in t if k not in TEMPLATE_KEYS]
  if missing or unknown:
    raise ValueError(f"prompt templates {where}: missing keys {missing}, unknown keys {unknown} "
                     f"(need exactly {list(TEMPLATE_KEYS)})")
  probe = dict(prompt_fields(10), category="c", categories="c", video_id="v", flags="[1]")
  for k in TEMPLATE_KEYS[1:]:
    try:
      t[k].format(**probe)
    except (KeyError, IndexError, ValueError) as e:
      raise ValueError(f"prompt templates {where}: key {k!r} uses an unknown placeholder ({e}); "
                       f"known: {sorted(probe)}") from e
  return t


def parse_category(reply: str) -> str:
  """First line of the category reply, lower-case, without punctuation/lead-ins, <= 5 words."""
  line = next((l for l in reply.strip().splitlines() if l.strip()), "")
  line = re.sub(r"^(the\s+)?(main\s+)?(sound\s+)?(source\s+)?(category\s+)?(is\s*)?:?\s*", "",
                line.strip().lower())
  words = re.findall(r"[a-z0-9]+", line)
  return " ".join(words[:5])


class QwenPrompter:
  """Prompts an audio LLM for control points.

  model: a `Qwen2AudioForConditionalGeneration` (or anything with `.generate` taking the
    processor's outputs); processor: `Qwen2AudioProcessor`; templates: `load_templates()`;
  document: the retrieval document D (list of {"video_id","categories","flags"}), for "rcpg".
  """

  def __init__(self, model, processor, templates: Dict[str, str], *, method: str,
               device: str = "cpu", max_new_tokens: int = 64, generate_kwargs: Optional[dict] = None,
               document: Sequence[Dict] = (), num_examples: int = 3, model_name: str = ""):
    if method not in METHODS:
      raise ValueError(f"QwenPrompter method must be one of {METHODS}, got {method!r}")
    if method == "rcpg" and not document:
      raise ValueError("QwenPrompter: method 'rcpg' needs a non-empty retrieval document D")
    self.model, self.processor, self.templates = model, processor, templates
    self.method, self.device, self.max_new_tokens = method, device, max_new_tokens
    self.generate_kwargs = dict(generate_kwargs or {})
    self.document, self.num_examples, self.model_name = list(document), num_examples, model_name
    self.processor.tokenizer.padding_side = "left"   # batched generation continues on the right

  @classmethod
  def from_config(cls, cfg, method: str, document: Sequence[Dict] = ()) -> "QwenPrompter":
    """Loads model + processor from cfg.model_name_or_path with local_files_only=True, on
    `resolve_device(cfg.device)`."""
    import torch
    import transformers
    device = resolve_device(cfg.device)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16,
             "float32": torch.float32}.get(cfg.torch_dtype)
    if dtype is None:
      raise ValueError(f"rcpg.torch_dtype must be bfloat16/float16/float32, got {cfg.torch_dtype!r}")
    try:
      processor = transformers.Qwen2AudioProcessor.from_pretrained(
          cfg.model_name_or_path, local_files_only=True)
      model = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(
          cfg.model_name_or_path, dtype=dtype, local_files_only=True)
    except OSError as e:
      raise FileNotFoundError(
          f"rcpg.model_name_or_path={cfg.model_name_or_path!r}: weights not found locally "
          f"(this code never downloads; fetch them first, e.g. `hf download ...`): {e}") from e
    try:
      model.to(device).eval()
    except (RuntimeError, AssertionError) as e:
      raise ValueError(f"rcpg.device={cfg.device!r} ({device}): cannot place the model there "
                       f"({e})") from e
    torch.manual_seed(cfg.seed)
    gen = dict(do_sample=cfg.do_sample, num_beams=cfg.num_beams)
    if cfg.do_sample:
      gen.update(temperature=cfg.temperature, top_p=cfg.top_p)
    return cls(model, processor, load_templates(cfg.prompts_file), method=method, device=device,
               max_new_tokens=cfg.max_new_tokens, generate_kwargs=gen, document=document,
               num_examples=cfg.num_examples, model_name=cfg.model_name_or_path)

  # -- prompts --------------------------------------------------------------------------------
  def first_turn(self, text: str) -> List[dict]:
    return [{"role": "system", "content": self.templates["system"]},
            {"role": "user", "content": [{"type": "audio", "audio_url": "clip"},
                                         {"type": "text", "text": text}]}]

  def examples_text(self, examples: Sequence[Dict], category: str, num_frames: int) -> str:
    """The retrieved examples D_q as text (empty when there is none)."""
    if not examples:
      return ""
    t, kw = self.templates, prompt_fields(num_frames)
    return t["examples_header"].format(category=category, **kw) + "".join(
        t["example_line"].format(video_id=d["video_id"], categories=", ".join(d["categories"]),
                                 flags="[" + ", ".join(str(int(x)) for x in d["flags"]) + "]",
                                 category=category, **kw)
        for d in examples)

  def render(self, messages: List[dict]) -> str:
    return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

  def generate(self, conversations: List[List[dict]], waves: List[np.ndarray]) -> List[str]:
    """One generate() call over a batch of conversations (one audio each) -> decoded replies."""
    import torch
    prompts = [self.render(c) for c in conversations]
    inputs = self.processor(text=prompts, audio=list(waves), sampling_rate=SAMPLE_RATE,
                            return_tensors="pt", padding=True)
    inputs = inputs.to(self.device)
    with torch.no_grad():
      out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **self.generate_kwargs)
    new = out[:, inputs["input_ids"].shape[1]:]
    return [s.strip() for s in self.processor.batch_decode(new, skip_special_tokens=True)]

  # -- run ------------------------------------------------------------------------------------
  def run(self, videos: List[Dict]) -> List[Dict]:
    """videos: list of {"video_id", "waveform" float32 [N] 16 kHz, "num_frames" T}.

    Returns per video {"flags" list[int] | None (unparseable), "raw_replies" [str],
    "category" str | None, "prompts" [str] (the rendered prompt of each step),
    "examples" [video ids retrieved]}.
    """
    t = self.templates
    waves = [np.asarray(v["waveform"], np.float32) for v in videos]
    convs, recs = [], []
    for v in videos:
      kw = prompt_fields(v["num_frames"])
      first = one_step_text(t, v["num_frames"]) if self.method == "1step" else t["describe"].format(**kw)
      convs.append(self.first_turn(first))
      recs.append({"raw_replies": [], "prompts": [], "category": None, "examples": []})

    def step(conversations):
      replies = self.generate(conversations, waves)
      for c, r, rec in zip(conversations, replies, recs):
        rec["prompts"].append(self.render(c))
        rec["raw_replies"].append(r)
        c.append({"role": "assistant", "content": r})
      return replies

    step(convs)
    if self.method != "1step":
      for c, v in zip(convs, videos):
        c.append({"role": "user", "content": [
            {"type": "text", "text": t["category"].format(**prompt_fields(v["num_frames"]))}]})
      cats = step(convs)
      for c, v, cat, rec in zip(convs, videos, cats, recs):
        T = int(v["num_frames"])
        rec["category"] = parse_category(cat)
        text = t["list"].format(**prompt_fields(T))
        if self.method == "rcpg":
          ex = core.retrieve_examples(self.document, rec["category"], self.num_examples, T,
                                      exclude_id=v.get("video_id"))
          rec["examples"] = [d["video_id"] for d in ex]
          text = self.examples_text(ex, rec["category"], T) + text
        c.append({"role": "user", "content": [{"type": "text", "text": text}]})
      step(convs)
    for v, rec in zip(videos, recs):
      f = core.parse_flags(rec["raw_replies"][-1], int(v["num_frames"]))
      rec["flags"] = None if f is None else f.tolist()
    return recs
