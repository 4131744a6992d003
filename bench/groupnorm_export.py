"""The three GroupNorm export modes (issue 15 point 3) on random group-norm variants: onnxruntime vs PyTorch, node counts.

    python bench/groupnorm_export.py [scrfd_500m scrfd_2.5g ...]

Random weights with non-trivial outputs (tests/test_export.py's `_gn_perturbed`), a (2, 3, 160, 224) input; each mode
exported dynamic and fixed (simplified with onnxsim), checked by `export.check_graph` (onnx.checker full_check, strict
shape inference with data propagation; the fixed file: a static shape on every value).
"""
import sys
from pathlib import Path
import tempfile
import numpy as np
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'tests'))
from test_export import _gn_perturbed
from scrfd_nb.export import export_onnx, ExportWrapper, run_onnx, check_graph

tmp = Path(tempfile.mkdtemp())
print('| model | mode | opset | file | max abs(onnxruntime - PyTorch) | largest output | nodes | InstanceNormalization | GroupNormalization | Sqrt |')
print('|---|---|---|---|---|---|---|---|---|---|')
for name in sys.argv[1:] or ['scrfd_500m', 'scrfd_2.5g']:
    m = _gn_perturbed(name)
    x = torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(): ref = ExportWrapper(m)(x)
    for mode, opset in [('instancenorm', 11), ('native', 21), ('decompose', 11)]:
        for dyn in [True, False]:
            p = export_onnx(m, tmp/f'{name}_{mode}_{dyn}.onnx', shape=(160, 224), batch_size=2, dynamic=dyn, opset=opset,
                            groupnorm=mode, simplify=not dyn)
            ops = check_graph(p, static=not dyn)
            e = max(float(np.abs(a - r.numpy()).max()) for a, r in zip(run_onnx(p, x), ref))
            print(f"| {name} | {mode} | {opset} | {'dynamic' if dyn else 'fixed, simplified'} | {e:.1e} | "
                  f"{max(float(r.abs().max()) for r in ref):.1f} | {sum(ops.values())} | {ops.get('InstanceNormalization', 0)} | "
                  f"{ops.get('GroupNormalization', 0)} | {ops.get('Sqrt', 0)} |", flush=True)
