#!/usr/bin/env python3
"""Writes the example repository's model files (needs PyTorch; run on the GPU machine):
examples/models/tiny_mlp/model.pt (TorchScript: 16 -> 32 -> 4, weights seeded with 0), and with
--resnet50 DIR a repository model DIR/resnet50_file (TorchScript ResNet-50, torchvision's
architecture with weights seeded with 0, and its config.toml) for checking served outputs
against PyTorch; with --unprofiled DIR, DIR/resnet18_file (ResNet-18, seeded): a model no
shipped profile knows, with no profile_model, so gpuslice measures it at registration.
Usage: export-example-models.py [--resnet50 DIR] [--unprofiled DIR]
"""
import argparse, os, shutil

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples", "models")


def tiny_mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    path = os.path.join(EXAMPLES, "tiny_mlp", "model.pt")
    torch.jit.script(model).save(path)
    print("wrote", path)


def classifier(folder, arch, name, profile_model):
    """DIR/NAME: torchvision's ARCH traced to TorchScript (weights seeded with 0) with the example
    resnet50's config, naming PROFILE_MODEL as its stand-in profile (None: measured at
    registration)."""
    import torchvision
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    target = os.path.join(folder, name)
    os.makedirs(target, exist_ok=True)
    torch.jit.trace(model, torch.randn(1, 3, 224, 224)).save(os.path.join(target, "model.pt"))
    config = open(os.path.join(EXAMPLES, "resnet50", "config.toml")).read()
    source = 'source = "model.pt"' + (f'\nprofile_model = "{profile_model}"' if profile_model else "")
    open(os.path.join(target, "config.toml"), "w").write(config.replace('source = "torchvision:resnet50"', source))
    print("wrote", target)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--resnet50", help="a repository folder to write resnet50_file into")
    p.add_argument("--unprofiled", help="a repository folder to write resnet18_file into")
    args = p.parse_args()
    tiny_mlp()
    if args.resnet50:
        classifier(args.resnet50, "resnet50", "resnet50_file", "resnet50")
    if args.unprofiled:
        classifier(args.unprofiled, "resnet18", "resnet18_file", None)
