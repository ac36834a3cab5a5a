"""Test-wide setup: without a GPU, Triton kernels run in the interpreter on CPU tensors."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def data_dir():
    from data.files_location import resolve_data_dir

    return resolve_data_dir()


@pytest.fixture(scope="session")
def tokenizer(data_dir):
    from data.tokenizer import Tokenizer

    return Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken")
