"""Keyframe Processor section (`config.keyframe`). Owned by coprop_jax/models/keyframe.py."""
import ml_collections


def get_keyframe_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Image encoder: "pvt_v2_b0".."pvt_v2_b5", "pvt_v2_b2_linear" or "resnet50".
  c.backbone = "pvt_v2_b5"
  # Width of the fused features and the transformer encoder/decoder.
  c.d_model = 256
  c.num_heads = 8
  # Depth of the video+audio transformer encoder and of the audio-queried decoder.
  c.num_encoder_layers = 2
  c.num_decoder_layers = 2
  # Number of audio-derived queries in the decoder.
  c.num_queries = 1
  # Output classes: 1 (binary, S4/MS3) or 71 (AVSS semantic, background included).
  c.num_classes = 1
  # Tokens the 128-d audio embedding is expanded into (keys/values of the stage fusion, extra
  # tokens of the transformer encoder).
  c.num_audio_tokens = 4
  # Optional PVT-v2 blocks-per-stage override, e.g. (1, 1, 1, 1) for tiny tests; () = variant's.
  c.backbone_depths = ()
  # Keep the VGGish audio net frozen when audio comes as log-mel patches (AVSBench's default:
  # its pretrained audio extractor is not trained); False trains it with the rest.
  c.freeze_vggish = True
  # Pretrained encoders: Orbax checkpoints written by `python -m coprop_jax.convert` ("" = random
  # init). backbone_weights: `convert pvt_v2 --variant bX` (or `convert resnet50` for "resnet50");
  # vggish_weights: `convert vggish`. Loaded into a fresh run only (not over init_from / resume),
  # shapes checked against the model; a mismatch names the parameters that differ.
  c.backbone_weights = ""
  c.vggish_weights = ""
  # Which checkpoint family backbone_weights came from ("hf", "original" whai362/PVT, "mmseg"):
  # fixes PVT-v2's LayerNorm epsilons (1e-6 for Hugging Face, 1e-5 for the other two).
  c.backbone_source = "hf"
  # Repeated layers (PVT-v2 stage blocks, transformer encoder/decoder layers) as one `nn.scan`
  # over stacked parameters: XLA compiles one layer per stack (PVT-v2-b5 KPF train step: minutes
  # -> about a minute on CPU). False unrolls them (same parameters, same outputs; XLA may then
  # fuse across layers). Parameters are stacked either way.
  c.scan_layers = True
  # Recompute those layers' activations in the backward pass instead of storing them (less
  # memory, ~1/3 more compute): for large batches or resolutions on accelerators.
  c.remat = False
  # Attention kernel: "auto" (cuDNN fused attention on an NVIDIA GPU when computing in bfloat16
  # and the head size allows, XLA otherwise: always XLA on CPU/TPU), "xla" or "cudnn".
  c.attention_impl = "auto"
  # Audio the KPF is trained and evaluated with (tasks/kpf.py): "normal"; "zero" (all-zero audio:
  # the audio-blind control, e.g. the demo's "KPF without audio") or "shuffle" (the audio of
  # another clip of the batch).
  c.audio_mode = "normal"
  # Compute dtype: "float32" or "bfloat16" (accelerators). Parameters, normalisation statistics,
  # attention softmax and the output logits stay float32.
  c.dtype = "float32"
  return c
