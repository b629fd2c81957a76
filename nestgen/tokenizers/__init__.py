"""Tokenizers: pixels <-> token grids for the masked generative transformer.

Every consumer uses the `Tokenizer` interface (interface.py) and gets one from
`load_tokenizer` (loading.py), which takes nestgen's own checkpoints and Hugging Face
diffusers `VQModel` folders (diffusers_vq.py).

nestgen's own VQ tokenizers: 2D (images, Conv2d) and 3D (video, space-time Conv3d) share one
vector quantizer (l2-normalized low-dim codes, commitment loss with straight-through
gradients, dead-code restart while training). See config.py for the knobs and their defaults;
`causal: true` makes the 3D one causal in time (MAGVIT-v2: frame 0 alone, then groups).
"""
from nestgen.tokenizers.checkpoint import load_vq_tokenizer, read_tokenizer_checkpoint, save_tokenizer
from nestgen.tokenizers.config import TokenizerConfig, pixel_frames
from nestgen.tokenizers.diffusers_vq import DiffusersVQTokenizer
from nestgen.tokenizers.interface import Tokenizer
from nestgen.tokenizers.loading import load_tokenizer, resolve_tokenizer_url
from nestgen.tokenizers.model import TokenizerOutput, VQTokenizer
from nestgen.tokenizers.pixels import clips_to_pixels, images_to_pixels, pixels_to_uint8, psnr_from_mse
from nestgen.tokenizers.quantizer import VectorQuantizer
from nestgen.tokenizers.training import (CodebookUsage, TokenizerTrainer, evaluate_tokenizer,
                                         train_tokenizer)

__all__ = [
    "Tokenizer", "load_tokenizer", "resolve_tokenizer_url",
    "TokenizerConfig", "pixel_frames", "VQTokenizer", "TokenizerOutput", "VectorQuantizer",
    "TokenizerTrainer", "train_tokenizer", "evaluate_tokenizer", "CodebookUsage",
    "save_tokenizer", "load_vq_tokenizer", "read_tokenizer_checkpoint", "DiffusersVQTokenizer",
    "images_to_pixels", "clips_to_pixels", "pixels_to_uint8", "psnr_from_mse",
]
