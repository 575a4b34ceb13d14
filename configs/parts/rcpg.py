"""RCPG control-point preprocessing section (`config.rcpg`). Owned by coprop_jax/rcpg/.

Run with `python -m coprop_jax.rcpg --config configs/rcpg.py --method ... --out FILE` (README).
"""
import ml_collections

from coprop_jax.rcpg.core import BINARY_IOU_THRESHOLD


def get_rcpg_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # "gt", "cosine", "1step", "3step" or "rcpg" (paper Table 2b). The CLI's --method overrides it.
  c.method = "rcpg"

  # --- Input (the CLI's --data/--layout/--split override these) ---
  # Root of an AVSBench tree (layout s4/ms3/avss) or a directory of WAVs (layout "wavdir").
  c.data_dir = ""
  # "s4", "ms3", "avss" (AVSBench layouts, read by data_pipelines.avsbench.readers) or "wavdir".
  c.layout = "wavdir"
  # AVSBench split to process ("train", "val", "test"); ignored for "wavdir".
  c.split = "test"
  # Frames per video for "wavdir" inputs (1 s frames); 0 = round(duration in seconds), at least 1.
  c.num_frames = 0

  # --- GT control points (Algorithm 1 step 1) ---
  # Binary masks (s4/ms3) carry no object ids: a frame is also a keyframe when the IoU of its
  # foreground with the previous GT frame's falls below this (a source appearing/switching), on
  # top of the foreground appearing/disappearing. Multi-class masks (avss) use the id-set rule only.
  # 0.4: best keyframe F1 on synthetic MS3 (0.83; S4 0.86) of {0.2,0.3,0.4,0.5} vs the generator's
  # sounding-set changes (40 clips x 10 frames); not yet checked on real AVSBench masks.
  # Default = coprop_jax.rcpg.core.BINARY_IOU_THRESHOLD, also used by the data pipeline's "gt"
  # control-point fallback (the same rule, one function).
  c.binary_iou_threshold = BINARY_IOU_THRESHOLD

  # --- Retrieval document D (rcpg method): training videos with categories and control points ---
  # JSONL, one line per video: {"video_id", "categories": [class names], "flags": [0/1 ...]}, e.g.
  # the output of `--method gt` on an AVSS train split. Takes precedence over document_avss_dir.
  c.document_file = ""
  # AVSBench-semantic root whose train split becomes D (class names per frame from label2idx.json;
  # its v1s/v1m subsets re-label the S4/MS3 videos). Empty: data_dir when the layout is avss;
  # for s4/ms3 one of the two document fields must be set (S4/MS3 masks carry no categories).
  c.document_avss_dir = ""
  # How many same-category examples from D go into the final prompt.
  c.num_examples = 3

  # --- Cosine baseline ---
  # Keyframe where consecutive audio-embedding cosine similarity < threshold.
  c.cosine_threshold = 0.8
  # Per-frame audio embedding: "vggish" (coprop_jax.models.vggish with params restored from
  # vggish_params), "precomputed" (embeddings_dir/<video_id>.npy, [T,128]) or "logmel_mean"
  # (the mean log-mel spectrum of each frame, [T,64]; no network needed).
  c.embedding = "vggish"
  c.vggish_params = ""   # Orbax directory written by `python -m coprop_jax.convert vggish`
  c.embeddings_dir = ""

  # --- Audio LLM (Qwen2-Audio through transformers) ---
  # Hugging Face model id or local path of the audio LLM. Loaded with local_files_only=True:
  # never downloaded by this code (pre-fetch it on the GPU box).
  c.model_name_or_path = "Qwen/Qwen2-Audio-7B-Instruct"
  c.torch_dtype = "bfloat16"   # "bfloat16", "float16" or "float32"
  # torch device: "auto" (cuda when torch sees a GPU, else cpu), "cpu", "cuda", "cuda:1", ...
  c.device = "auto"
  c.batch_size = 8             # videos per generate() call
  c.max_new_tokens = 64
  # Generation settings passed to model.generate (greedy by default: reproducible flags).
  c.do_sample = False
  c.temperature = 1.0
  c.top_p = 1.0
  c.num_beams = 1
  c.seed = 0                   # torch seed (matters only with do_sample=True)
  # Prompt templates: a JSON file with the keys of coprop_jax/rcpg/templates/prompts.json.
  # Empty = the packaged templates.
  c.prompts_file = ""
  # Fallback when a reply cannot be parsed: "first_frame" or "cosine" (recorded in the output).
  c.fallback = "first_frame"
  return c
