"""Data section of every experiment config (`config.data`). Owned by data_pipelines/."""
import ml_collections


def get_data_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Which dataset: "synthetic_s4" / "synthetic_ms3" / "synthetic_avss" (generated into
  # `manual_dir` by data_pipelines.synthetic, then built like the real ones) or "avsbench_s4",
  # "avsbench_ms3", "avsbench_avss" (TFDS builders over a manual download in `manual_dir`).
  # `data_pipelines.prepare.prepare_dataset(config.data)` does both and records the settings: a
  # tree or build made from other settings is regenerated/rebuilt (synthetic, derived data) or
  # refused (a real download whose files changed since it was built).
  c.name = "avsbench_s4"
  # Where TFDS writes/reads the prepared ArrayRecord files.
  c.data_dir = "~/tensorflow_datasets"
  # AVSBench manual-download directory (the folder holding Single-source/, Multi-sources/ or the
  # AVSS metadata.csv). For synthetic data: where the synthetic AVSBench-layout tree is written.
  c.manual_dir = "~/avsbench"
  # Frames per clip (AVSBench S4/MS3: 5; AVSS: 10, v1 clips padded with frame_valid=False).
  c.num_frames = 5
  # Square training/eval image size after resizing (AVSBench: 224).
  c.image_size = 224
  # Global batch size (clips); split evenly over the data axis of the mesh / the hosts.
  c.batch_size = 4
  c.eval_batch_size = 1  # AVSBench evaluates one video per batch (the F-score depends on it).
  # Seed of the deterministic shuffle (grain index sampler).
  c.shuffle_seed = 0
  # grain worker processes per host (0 = read in the main process).
  c.num_workers = 0
  # Augmentation, applied identically to every frame and mask of a clip (training only).
  c.augment = ml_collections.ConfigDict()
  c.augment.enabled = True
  c.augment.random_resized_crop_scale = (0.5, 1.0)  # area fraction range of the crop
  c.augment.flip_prob = 0.5                          # horizontal flip probability
  c.augment.color_jitter = 0.2                       # brightness/contrast/saturation strength
  # Per-frame audio embedding computed when examples are read: "" (none: batches carry the log-mel
  # patches `audio_logmel` only and the networks run VGGish on them) or "logmel_stats" (adds
  # `audio_embed` [T, 128] = coprop_jax.audio.logmel_stats_embedding, a weight-free stand-in for
  # VGGish embeddings; the networks then use it and no VGGish is built: the demo's choice).
  c.audio_embed = ""
  # Optional RCPG output (JSON lines, one per video) joined onto examples by video id when they
  # are read (input_pipeline), so a new file needs no rebuild; without it the built dataset's
  # control points are used (frame 0 only unless it was built with a file).
  c.control_points_file = ""
  # What to do for a video missing from control_points_file: "error", "first_frame" (frame 0 only)
  # or "gt" (control points derived from GT masks where available).
  c.control_points_fallback = "error"
  # Building: skip videos that fail to read, or S4 CSV rows naming an unknown category (each
  # reported with its reason), instead of failing; a split left empty is reported and not built.
  c.skip_bad = False
  # Building: a WAV shorter than its clip's frames (T seconds) is zero-padded; by up to this many
  # seconds quietly (AVSBench's clips are often a few hundredths of a second short), beyond it with
  # a warning naming the file and both lengths.
  c.short_audio_tolerance_s = 0.1
  # Synthetic data generator settings (used when `name` starts with "synthetic_"; the image size
  # is `image_size`, the frame count the layout's).
  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.num_videos = 48
  c.synthetic.seed = 0
  # Which clips: "random" (data_pipelines.synthetic: the sounding set changes at random frames,
  # often never in a 5-frame clip), "moc" (data_pipelines.moc_synth: one source at a time,
  # switching inside 3 of 4 clips, as the paper's MOC subset), "moc_ambiguous" (the same with
  # unreliable per-frame audio, fast resizing objects and look-alike distractors; the demo's
  # data) or "tracking" (one object tracked through the clip: the propagator's tracking prior).
  c.synthetic.generator = "random"
  return c
