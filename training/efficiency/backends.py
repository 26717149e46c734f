"""What runs a trained model's forward pass in evaluate_efficiency.py and predict.py (`--backend`): torch (the
model itself, or its deploy form), or ONNX Runtime on the project's own ONNX export.

`OnnxBackend` is called like the model: a (N, 3, H, W) tensor in, fp32 logits out. The ONNX export has a static
input size (the dynamo exporter lowers the pyramid pooling to fixed windows only then, see deploy.export_onnx), so
each input size gets its own file, exported at its first use and cached next to the model:
`models/<id>.<H>x<W>.onnx` beside `models/<id>.pth`. The file records the SHA-256 of the weights it was exported
from (models/card.py's content_hash) in its metadata; a file whose hash is not that of the weights now is exported
again. Files are written atomically (training/files.py), so an interrupted export leaves no half file behind. A
batch runs image by image through the batch-1 session.

Providers: on a CUDA device ONNX Runtime's CUDA execution provider, where the installed build has it (the
onnxruntime-gpu package); a build without it is reported as such before anything runs (`check_backend`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from training.efficiency.deploy import OnnxRuntimeForm, export_onnx, require_onnx
from training.errors import UserError
from training.files import check_writable
from training.models.card import content_hash

BACKENDS = ("torch", "onnxruntime")
HASH_KEY = "source_sha256"  # the ONNX file's metadata: the content hash of the weights it was exported from
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")


def onnx_cache_path(model_path: str | Path, hw: tuple[int, int]) -> Path:
    """`models/<id>.<H>x<W>.onnx` for `models/<id>.pth`."""
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}.{hw[0]}x{hw[1]}.onnx")


def provider_for(device: torch.device) -> str:
    """OnnxRuntimeForm's provider for `device`: "cuda" on a CUDA device (its build must have it), else "cpu"."""
    return "cuda" if device.type == "cuda" else "cpu"


def describe_providers() -> str:
    """ONNX Runtime's version and providers, its GPU ones said to be unavailable where the build has none."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    gpu = [name for name in available if name in GPU_PROVIDERS]
    gpu_text = ", ".join(gpu) if gpu else "unavailable in this build (CPU only; onnxruntime-gpu has them)"
    return f"ONNX Runtime {ort.__version__}: providers {', '.join(available)}; GPU providers: {gpu_text}"


def check_backend(backends: list[str], device: torch.device, flag: str = "--backend") -> None:
    """Refuse, before anything runs, an ONNX Runtime backend that cannot run on `device`."""
    if "onnxruntime" not in backends:
        return
    require_onnx(f"{flag} onnxruntime")
    import onnxruntime as ort

    if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UserError(
            f"{flag} onnxruntime: the device is CUDA but ONNX Runtime {ort.__version__} has no GPU provider in this "
            f"build (it has {', '.join(ort.get_available_providers())}); expected onnxruntime-gpu installed, or "
            "--device cpu"
        )


class OnnxBackend:
    """`model` (the loaded network of the weights at `model_path`) run by ONNX Runtime on `device`, an ONNX file per
    input size, exported on first use and cached next to the weights (see the module's docstring)."""

    precision = "fp32"
    dtype = torch.float32

    def __init__(self, model: nn.Module, model_path: str | Path, device: torch.device, threads=None, log=None):
        self.model, self.model_path, self.device = model, Path(model_path), device
        self.log = log or (lambda line: None)
        self.provider = provider_for(device)
        self.threads = threads
        self.source_hash = content_hash(self.model_path)
        self.sessions: dict[tuple[int, int], OnnxRuntimeForm] = {}

    def session(self, hw: tuple[int, int]) -> OnnxRuntimeForm:
        """The ONNX Runtime session for inputs of size `hw`: the cached file if it is the weights' own, else a new
        export."""
        if hw in self.sessions:
            return self.sessions[hw]
        path = onnx_cache_path(self.model_path, hw)
        runtime = None
        if path.exists():
            runtime = self._open(path)
            if runtime is not None and runtime.metadata.get(HASH_KEY) != self.source_hash:
                runtime = None  # exported from other weights: the model changed since
        if runtime is None:
            why = "weights changed since" if path.exists() else "first use at this size"
            self.log(f"ONNX Runtime: exporting {path} ({why}; cached for the next runs)")
            check_writable(path.parent)  # the cache sits next to the model: a read-only folder is named
            export_onnx(self.model, hw, path, flag="--backend onnxruntime", metadata={HASH_KEY: self.source_hash})
            runtime = OnnxRuntimeForm(path, self.threads, self.provider, spinning=False)
        self.sessions[hw] = runtime
        return runtime

    def _open(self, path: Path) -> OnnxRuntimeForm | None:
        # threads that wait without spinning: the tools time ONNX Runtime interleaved with the torch forms, and its
        # spinning threads took the cores from them (the plain model's latency doubled beside it, 30 -> 63 ms)
        try:
            return OnnxRuntimeForm(path, self.threads, self.provider, spinning=False)
        except UserError:
            raise  # no such provider: exporting again would not help
        except Exception:  # not a readable ONNX file (e.g. written by another tool): exported again
            return None

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def eval(self) -> OnnxBackend:
        return self

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        runtime = self.session((int(x.shape[2]), int(x.shape[3])))
        outputs = [runtime(x[index : index + 1]) for index in range(x.shape[0])]
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        return out.to(self.device)

    def describe(self) -> str:
        provider = {"cpu": "CPU", "cuda": "CUDA"}[self.provider]
        return (
            f"ONNX Runtime, {provider} execution provider, fp32 (BatchNorm folded), an ONNX file per input size "
            f"cached as {onnx_cache_path(self.model_path, ('H', 'W')).name}"
        )
