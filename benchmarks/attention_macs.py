"""MACs of ViT-B/16 at 224×224 (KerasHub's ViTBackbone, random weights, built offline) by `tfprune.count_macs`,
beside the 17.59 G MACs Torch-Pruning's op counter reports for timm's `vit_base_patch16_224`.

Run: `python benchmarks/attention_macs.py`. The backbone has no classifier; timm's model has a 768×1000 head
(0.77 M MACs, 0.004%), which the ratio leaves in.
"""

import time

import keras_hub

import tfprune

TORCH_PRUNING_VIT_B16 = 17.59e9


def vit_b16():
    """KerasHub's ViT-B/16 backbone at 224×224, with random weights (nothing is downloaded)."""
    return keras_hub.models.ViTBackbone(image_shape=(224, 224, 3), patch_size=16, num_layers=12, num_heads=12,
                                        hidden_dim=768, mlp_dim=3072)


def vit_macs(image_size=224, patch_size=16, layers=12, hidden=768, mlp=3072):
    """ViT's MACs by hand: the patch convolution, then per block the Q, K, V and output projections, QKᵀ and AV,
    and the two MLP layers (T = patches + the class token)."""
    patches = (image_size // patch_size) ** 2
    tokens = patches + 1
    block = 4 * tokens * hidden * hidden + 2 * tokens * tokens * hidden + 2 * tokens * hidden * mlp
    return patches * patch_size * patch_size * 3 * hidden + layers * block


def main():
    start = time.perf_counter()
    model = vit_b16()
    built = time.perf_counter()
    macs = tfprune.count_macs(model)
    counted = time.perf_counter()
    print(f"ViT-B/16 at 224x224 (KerasHub ViTBackbone): {macs:,} MACs = {macs / 1e9:.3f} G "
          f"(built in {built - start:.1f} s, counted in {counted - built:.1f} s)")
    print(f"by hand: {vit_macs():,} MACs; ratio to Torch-Pruning's 17.59 G for timm's ViT-B/16: "
          f"{macs / TORCH_PRUNING_VIT_B16:.4f}")


if __name__ == "__main__":
    main()
