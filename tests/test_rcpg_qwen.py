"""RCPG Qwen path end to end with a tiny randomly-initialised Qwen2-Audio (no downloads)."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from coprop_jax.rcpg import jsonl, qwen, runner  # noqa: E402
from configs.parts.rcpg import get_rcpg_config  # noqa: E402

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>",
           "<|audio_eos|>"]


def _byte_tokenizer():
  from transformers.convert_slow_tokenizer import bytes_to_unicode
  chars = sorted(bytes_to_unicode().values())
  vocab = {c: i for i, c in enumerate(chars)}
  for s in SPECIAL:
    vocab[s] = len(vocab)
  tok = transformers.Qwen2Tokenizer(vocab=vocab, merges=[])
  tok.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
  return tok, vocab


@pytest.fixture(scope="module")
def tiny():
  tok, vocab = _byte_tokenizer()
  fe = transformers.WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=160,
                                            chunk_length=30, n_fft=400)
  processor = transformers.Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tok)
  cfg = transformers.Qwen2AudioConfig(
      audio_config=dict(d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32,
                        num_mel_bins=80, max_source_positions=1500),
      text_config=dict(model_type="qwen2", vocab_size=len(vocab), hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                       intermediate_size=64, max_position_embeddings=2048),
      audio_token_index=vocab["<|AUDIO|>"])
  torch.manual_seed(0)
  model = transformers.Qwen2AudioForConditionalGeneration(cfg).eval()
  model.generation_config.pad_token_id = vocab["<|endoftext|>"]
  model.generation_config.eos_token_id = vocab["<|im_end|>"]
  return model, processor


def _videos(n=2, t=5):
  rng = np.random.default_rng(0)
  return [{"video_id": f"v{i}", "num_frames": t,
           "waveform": (0.1 * rng.standard_normal(t * 16000)).astype(np.float32)} for i in range(n)]


DOC = [{"video_id": "train_a", "categories": ["guitar"], "flags": [1, 0, 1, 0, 0]},
       {"video_id": "train_b", "categories": ["guitar", "man"], "flags": [1, 0, 0, 0, 1]},
       {"video_id": "train_c", "categories": ["dog"], "flags": [1, 1, 0, 0, 0]}]


class ScriptedCategory(qwen.QwenPrompter):
  """Runs the real tiny model every step but replaces the 2nd reply (the category) with a fixed
  answer, so retrieval from D is exercised deterministically."""

  def generate(self, conversations, waves):
    replies = super().generate(conversations, waves)
    if len(conversations[0]) == 4:   # system, user(audio), assistant, user(category)
      replies = ["The main source is a Guitar."] * len(replies)
    return replies


def _prompter(tiny, method, cls=qwen.QwenPrompter):
  model, processor = tiny
  return cls(model, processor, qwen.load_templates(), method=method, max_new_tokens=8,
             generate_kwargs=dict(do_sample=False), document=DOC, num_examples=2,
             model_name="tiny-qwen2-audio")


class Scripted(qwen.QwenPrompter):
  """Runs the real tiny model every step, then replaces its (random) replies with scripted ones
  keyed by the number of messages, so parsing and retrieval are checked deterministically."""
  script = {}

  def generate(self, conversations, waves):
    replies = super().generate(conversations, waves)
    return [self.script.get(len(c), r) for c, r in zip(conversations, replies)]


def _user_texts(prompt):
  """The user turns' texts of a rendered prompt (audio placeholder removed)."""
  turns = prompt.split("<|im_start|>user\n")[1:]
  return [t.split("<|im_end|>")[0].replace("Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n", "")
          for t in turns]


def test_one_step_prompt_parses_the_reply(tiny):
  class OneStep(Scripted):
    script = {2: "Sure: [1, 0, 0, 1, 0]"}   # system + user(audio) -> the only reply
  recs = _prompter(tiny, "1step", OneStep).run(_videos())
  for r in recs:
    assert len(r["prompts"]) == len(r["raw_replies"]) == 1
    p = r["prompts"][0]
    assert p.count("<|audio_bos|><|AUDIO|><|audio_eos|>") == 1
    assert p.endswith("<|im_start|>assistant\n")
    assert "evenly divided into five frames" in p
    assert r["raw_replies"] == ["Sure: [1, 0, 0, 1, 0]"] and r["flags"] == [1, 0, 0, 1, 0]
  class Garbage(Scripted):
    script = {2: "I hear music."}
  assert [r["flags"] for r in _prompter(tiny, "1step", Garbage).run(_videos())] == [None, None]


def test_one_step_and_three_step_prompts_have_the_same_content(tiny):
  one = _prompter(tiny, "1step").run(_videos(1))[0]["prompts"][0]
  three = _prompter(tiny, "3step", ScriptedCategory).run(_videos(1))[0]["prompts"][2]
  t3 = _user_texts(three)
  assert len(t3) == 3 and _user_texts(one) == [" ".join(t3)]
  assert "from the first frame to the fifth frame in the format of a list." in t3[2]


def test_three_step_history_and_rcpg_retrieval(tiny):
  recs = _prompter(tiny, "rcpg", ScriptedCategory).run(_videos())
  for r in recs:
    assert len(r["prompts"]) == 3 and len(r["raw_replies"]) == 3
    p1, p2, p3 = r["prompts"]
    # Audio only in the first user turn; every later prompt carries the full history.
    for p in (p1, p2, p3):
      assert p.count("<|AUDIO|>") == 1
    assert p2.startswith(p1) and p3.startswith(p2[:-len("<|im_start|>assistant\n")])
    assert r["raw_replies"][0] in p2 and r["raw_replies"][1] in p3
    assert "Which single category" in p2 and p2.count("<|im_start|>user") == 2
    assert p3.count("<|im_start|>user") == 3 and p3.count("<|im_start|>assistant") == 3
    assert r["category"] == "a guitar"
    # Retrieval: the category reply selected the guitar examples of D, inserted in the last turn.
    assert r["examples"] == ["train_a", "train_b"]
    assert "train_a (guitar): [1, 0, 1, 0, 0]" in p3 and "train_b (guitar, man): [1, 0, 0, 0, 1]" in p3
    assert "train_c" not in p3
    assert "train_a" not in p2


def test_three_step_no_retrieval(tiny):
  recs = _prompter(tiny, "3step", ScriptedCategory).run(_videos(1))
  assert recs[0]["examples"] == [] and "train_a" not in recs[0]["prompts"][2]


@pytest.mark.parametrize("fallback", ["first_frame", "cosine"])
def test_runner_with_tiny_model_records_fallback(tiny, tmp_path, fallback):
  import soundfile as sf
  rng = np.random.default_rng(1)
  for i in range(3):
    sf.write(tmp_path / f"clip{i}.wav", 0.1 * rng.standard_normal(5 * 16000), 16000)
  cfg = get_rcpg_config()
  cfg.fallback, cfg.batch_size, cfg.embedding = fallback, 2, "logmel_mean"
  cfg.cosine_threshold = 0.9999
  prompter = _prompter(tiny, "1step")
  out = tmp_path / "cp.jsonl"
  stats = runner.run(cfg, "1step", str(out), data_dir=str(tmp_path), layout="wavdir",
                     split="test", prompter=prompter, progress=False)
  recs, _ = jsonl.read_records(out)
  assert stats["written"] == 3 and len(recs) == 3
  # A random model's 8 tokens are garbage: every reply must take the recorded fallback path.
  assert stats["fallbacks"] == sum(not r["parse_ok"] for r in recs) == 3
  for r in recs:
    assert len(r["flags"]) == 5 and r["flags"][0] == 1
    assert r["model"] == "tiny-qwen2-audio" and r["prompt_version"] == "v2"
    assert len(r["raw_replies"]) == 1
    if not r["parse_ok"]:
      assert r["fallback"] == fallback
      if fallback == "first_frame":
        assert r["flags"] == [1, 0, 0, 0, 0]
    else:
      assert r["fallback"] is None


def test_rcpg_on_ms3_retrieves_from_an_avss_document(tiny, tmp_path):
  """MS3 (no categories of its own) with D from an AVSS tree: queries find examples and the run
  reports how many did."""
  from coprop_jax.rcpg import runner as rn
  from data_pipelines import synthetic
  synthetic.write_dataset(tmp_path / "avss", "avss", num_videos=9, size=16, seed=3)
  synthetic.write_dataset(tmp_path / "ms3", "ms3", num_videos=5, size=16, seed=3)
  cfg = get_rcpg_config()
  cfg.document_avss_dir, cfg.embedding = str(tmp_path / "avss"), "logmel_mean"
  doc, _ = rn.load_document(cfg, str(tmp_path / "ms3"), "ms3")
  cat = doc[0]["categories"][0]
  model, processor = tiny

  class Cat(Scripted):
    script = {4: f"It is a {cat}."}
  prompter = Cat(model, processor, qwen.load_templates(), method="rcpg", max_new_tokens=4,
                 generate_kwargs=dict(do_sample=False), document=doc, num_examples=2)
  out = tmp_path / "rcpg.jsonl"
  stats = rn.run(cfg, "rcpg", str(out), data_dir=str(tmp_path / "ms3"), layout="ms3",
                 split="test", prompter=prompter, progress=False)
  recs, _ = jsonl.read_records(out)
  assert stats["retrieval_queries"] == stats["retrieval_found"] == len(recs) == 1
  assert stats["document_entries"] == len(doc)
  hits = [d for d in doc if cat in d["categories"]]   # same frame count (5) first, then by id
  want = [d["video_id"] for d in sorted(hits, key=lambda d: (len(d["flags"]) != 5, d["video_id"]))][:2]
  assert recs[0]["examples"] == want and recs[0]["category"] == f"it is a {cat}"
  assert f"{want[0]} (" in recs[0]["prompts"][2]
