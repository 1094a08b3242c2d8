"""The data: where CIFAR comes from and how it is read, split, normalized and augmented.

- `obtain`: the official archives, the data root, a mirror or the download;
- `cifar`: reading and validating the files, `load_cifar`, stratified splits, mean/std, fingerprint;
- `augment`: batched crop / flip / jitter / cutout, MixUp / CutMix, `BatchLoader`;
- `policies`: AutoAugment, RandAugment, TrivialAugment through torchvision.transforms.v2.
"""
