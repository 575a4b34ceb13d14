"""Qwen2-Audio prompting for control points (Table 2b: 1-step, 3-step, RCPG).

Runs through Hugging Face transformers (`Qwen2AudioForConditionalGeneration` +
`Qwen2AudioProcessor`). Conversations are rendered with the processor's chat template; the audio
is in the first user turn only, later turns append the assistant's reply and a text-only user
turn (REFERENCE section 6). Each video yields a record dict (see `QwenPrompter.run`).
"""
from __future__ import annotations

import importlib.resources
import json
import logging
import re
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from coprop_jax.rcpg import core

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
METHODS = ("1step", "3step", "rcpg")
TEMPLATE_KEYS = ("version", "system", "one_step", "describe", "category", "list",
                 "examples_header", "example_line")


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
  missing = [k for k in TEMPLATE_KEYS if k not in t]
  if missing:
    raise ValueError(f"prompt templates {where}: missing keys {missing} (need {list(TEMPLATE_KEYS)})")
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
  document: the retrieval document D (list of {"video_id","category","flags"}), for "rcpg".
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
    """Loads model + processor from cfg.model_name_or_path with local_files_only=True."""
    import torch
    import transformers
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
    model.to(cfg.device).eval()
    torch.manual_seed(cfg.seed)
    gen = dict(do_sample=cfg.do_sample, num_beams=cfg.num_beams)
    if cfg.do_sample:
      gen.update(temperature=cfg.temperature, top_p=cfg.top_p)
    return cls(model, processor, load_templates(cfg.prompts_file), method=method, device=cfg.device,
               max_new_tokens=cfg.max_new_tokens, generate_kwargs=gen, document=document,
               num_examples=cfg.num_examples, model_name=cfg.model_name_or_path)

  # -- prompts --------------------------------------------------------------------------------
  def first_turn(self, text: str) -> List[dict]:
    return [{"role": "system", "content": self.templates["system"]},
            {"role": "user", "content": [{"type": "audio", "audio_url": "clip"},
                                         {"type": "text", "text": text}]}]

  def examples_text(self, category: str, num_frames: int) -> str:
    ex = core.retrieve_examples(self.document, category, self.num_examples)
    if not ex:
      return ""
    t = self.templates
    return t["examples_header"].format(category=category, T=num_frames) + "".join(
        t["example_line"].format(video_id=d["video_id"], category=d["category"],
                                 flags="[" + ", ".join(str(int(x)) for x in d["flags"]) + "]")
        for d in ex)

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
      T = int(v["num_frames"])
      first = t["one_step"] if self.method == "1step" else t["describe"]
      convs.append(self.first_turn(first.format(T=T)))
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
        c.append({"role": "user", "content": [{"type": "text",
                                               "text": t["category"].format(T=v["num_frames"])}]})
      cats = step(convs)
      for c, v, cat, rec in zip(convs, videos, cats, recs):
        T = int(v["num_frames"])
        rec["category"] = parse_category(cat)
        text = t["list"].format(T=T)
        if self.method == "rcpg":
          ex = core.retrieve_examples(self.document, rec["category"], self.num_examples)
          rec["examples"] = [d["video_id"] for d in ex]
          text = self.examples_text(rec["category"], T) + text
        c.append({"role": "user", "content": [{"type": "text", "text": text}]})
      step(convs)
    for v, rec in zip(videos, recs):
      f = core.parse_flags(rec["raw_replies"][-1], int(v["num_frames"]))
      rec["flags"] = None if f is None else f.tolist()
    return recs
