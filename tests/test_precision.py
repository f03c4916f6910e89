"""Lower precisions end to end: int8 (calibrated QDQ, mixed precision), bf16 on OpenVINO, and their checks."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cli_util import MODEL, SHAPE, Files, assert_one_line_error, run_main
from onnx import numpy_helper

from rfdeploy import api, cli
from rfdeploy.backends import BACKENDS, backend
from rfdeploy.backends.openvino_backend import cpu_capabilities
from rfdeploy.errors import RFDeployError
from rfdeploy.quantize.calibration import ImagePreprocess, calibration_data
from rfdeploy.quantize.deploy import PrecisionRequest

openvino = pytest.importorskip("openvino")
HAS_BF16 = "BF16" in cpu_capabilities()


@pytest.fixture()
def files(tmp_path, monkeypatch) -> Files:
    monkeypatch.syspath_prepend(str(tmp_path))
    return Files(tmp_path)


def searched_outputs(files: Files, x: np.ndarray) -> list[np.ndarray]:
    searched = api.load(MODEL, files.ckpt, files.structure).searched
    with torch.no_grad():
        out = searched(torch.from_numpy(x))
    return [out.double().numpy()]


def snr_db(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(10 * np.log10((expected ** 2).sum() / ((actual - expected) ** 2).sum()))


def calibration_file(files: Files, count: int = 12) -> str:
    generator = np.random.default_rng(3)
    path = files.root / "calib.npy"
    np.save(path, generator.standard_normal((count, 3, 12, 12)).astype(np.float32))
    return str(path)


def test_int8_export_writes_a_calibrated_qdq_model_with_uint8_activations_and_per_channel_int8_weights(
        files, capsys):
    calib = calibration_file(files)
    code, err = run_main(files.args() + ["--precision", "int8", "--calib", calib, "--calib-count", "8"], capsys)
    assert code == 0, err
    model = onnx.load(files.out / "model.int8.onnx")
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    quantize = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    assert quantize and all(initializers[node.input[2]].dtype == np.uint8 for node in quantize)
    weights = [node for node in model.graph.node if node.op_type == "DequantizeLinear"
               and initializers.get(node.input[0]) is not None and initializers[node.input[0]].dtype == np.int8]
    assert weights and all(initializers[node.input[1]].size > 1 for node in weights)  # one scale per channel
    report = json.loads((files.out / "report.json").read_text())["precision"]
    assert report["calibration"]["calibration_sets"] == 8 and report["passed"]
    held_out = report["calibration"]["held_out_sets"]
    assert held_out == ["calib.npy[8]", "calib.npy[9]"]  # never the calibration samples
    ops = report["quantized_ops"]
    assert (f"int8: calibrated on 8 batch(es) of {calib} (mse ranges), uint8 activations, op set {ops['kept']} "
            f"(by {ops['decided_by']} on onnxruntime);") in err
    # the SNR the report gives is what the written file computes, on the held-out sample
    x = np.load(calib)[8:9]
    session = ort.InferenceSession(str(files.out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float64)
    expected = searched_outputs(files, x)[0]
    check = report["checks"][0]
    assert check["backend"] == "onnxruntime-cpu-int8" and check["precision"] == "int8"
    assert check["snr_db"] <= snr_db(actual, expected) + 0.01  # the worst held-out sample (rounded to 0.01 dB)
    assert check["snr_db"] >= 15.0 and check["cosine"] > 0.95


def test_int8_without_calibration_data_is_refused_naming_calib(files, capsys):
    code, err = run_main(files.args() + ["--precision", "int8"], capsys)
    assert_one_line_error(code, err, "--calib")
    assert not files.out.exists()


def test_calib_random_deploys_with_a_warning_that_accuracy_is_unknown(files, capsys):
    code, err = run_main(files.args() + ["--precision", "int8", "--calib", "random", "--calib-count", "4"], capsys)
    assert code == 0, err
    assert any(line.startswith("rfdeploy: warning: --calib random") for line in err.splitlines())
    report = json.loads((files.out / "report.json").read_text())["precision"]
    assert report["calibration"]["random"] and report["passed"]


def test_an_unreachable_snr_writes_nothing_but_the_failed_report(files, capsys):
    code, err = run_main(files.args() + ["--precision", "int8", "--calib", "random", "--calib-count", "4",
                                         "--min-snr", "400"], capsys)
    assert code == 1, err
    assert sorted(p.name for p in files.out.iterdir()) == ["failed-report.json"]
    lines = err.splitlines()
    # the exact fp32 model passed; only the int8 one failed, and each line says its own verdict
    assert next(line for line in lines if line.startswith("verification vs searched")).endswith("PASSED")
    assert next(line for line in lines if line.startswith("int8 on onnxruntime")).endswith("FAILED")
    report = json.loads((files.out / "failed-report.json").read_text())["precision"]
    assert not report["passed"] and not report["mixed_precision"]["met"]


class OneOutlier(torch.nn.Module):
    """Five convs; the third writes one channel far above the others that no later conv reads, so that
    quantizing its output crushes the channels that matter: keeping that tensor in fp32 pays, and leaves the
    other convs in int8."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.convs = torch.nn.ModuleList([torch.nn.Conv2d(3, 8, 3, padding=1)] +
                                         [torch.nn.Conv2d(8, 8, 3, padding=1) for _ in range(4)])
        with torch.no_grad():
            self.convs[2].bias[0] = 200.0
            self.convs[3].weight[:, 0] = 0.0

    def forward(self, x):
        for conv in self.convs[:-1]:
            x = torch.relu(conv(x))
        return self.convs[-1](x)


@pytest.mark.parametrize("ranking", ["output", "qdq"])
def test_mixed_precision_keeps_the_costliest_tensors_in_fp32_until_the_target_is_met(ranking):
    shape = [(1, 3, 12, 12)]
    plain = api.export(OneOutlier().eval(), input_shapes=shape, write=False,
                       precision=PrecisionRequest("int8", calib="random", calib_count=4, int8_ops="all"))
    reached = plain.report["precision"]["checks"][0]["snr_db"]
    target = reached + 6.0  # out of reach of the all-int8 model
    mixed = api.export(OneOutlier().eval(), input_shapes=shape, write=False,
                       precision=PrecisionRequest("int8", calib="random", calib_count=4, min_snr_db=target,
                                                  ranking=ranking, int8_ops="all"))
    section = mixed.report["precision"]
    assert section["mixed_precision"]["ranking"] == ranking
    assert section["passed"] and section["checks"][0]["snr_db"] >= target
    kept = section["mixed_precision"]["kept_fp32_nodes"]
    assert kept and section["quantized_nodes"] < plain.report["precision"]["quantized_nodes"]
    graph_nodes = {node.name for node in mixed.precision.model.graph.node}
    assert set(kept) <= graph_nodes  # the kept nodes are still there, unquantized
    assert 0 < section["int8_share"]["int8_nodes"] < section["int8_share"]["compute_nodes"] == 5


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has neither AMX nor AVX512-BF16")
def test_bf16_export_is_checked_on_openvino_by_snr(files, capsys):
    code, err = run_main(files.args() + ["--precision", "bf16"], capsys)
    assert code == 0, err
    check = json.loads((files.out / "report.json").read_text())["precision"]["checks"][0]
    assert check["backend"] == "openvino-bf16" and 25.0 <= check["snr_db"] < 80.0
    assert not (files.out / "model.int8.onnx").exists()


def test_openvino_fp32_is_exact_because_its_precision_is_set(files, capsys):
    code, err = run_main(files.args() + ["--verify-backends", "openvino"], capsys)
    assert code == 0, err
    verification = json.loads((files.out / "report.json").read_text())["verification"]
    (check,) = verification["backends"]
    assert check["backend"] == "openvino" and check["passed"] and check["max_rel_err"] < 1e-4
    assert check["min_snr_db"] is None and check["atol"] == 1e-4  # fp32: held to the tolerances
    assert "verification vs searched PyTorch forward on openvino" in err


def test_reports_give_each_outputs_own_figures(files):
    result = api.export(MODEL, files.ckpt, files.structure, input_shapes=[(1, 3, 12, 12)], write=False,
                        precision=PrecisionRequest("int8", calib="random", calib_count=4))
    check = result.report["precision"]["checks"][0]
    (output,) = check["outputs"]  # the tiny model has one output
    assert output["snr_db"] == check["snr_db"] and output["max_abs_err"] == check["max_abs_err"]
    assert output["cosine"] == check["cosine"]


@pytest.mark.parametrize(("argv", "names"), [
    (["--precision", "bf16", "--verify-backends", "onnxruntime"], ("onnxruntime", "bf16", "openvino")),
    (["--precision", "fp16"], ("fp16", "--trt")),
    (["--precision", "int8", "--calib", "random", "--verify-backends", "torch"], ("torch", "int8")),
    (["--precision", "bf16", "--calib", "random"], ("--calib", "bf16")),
    (["--precision", "int8", "--calib", "nowhere.npz"], ("nowhere.npz",)),
    (["--precision", "int8", "--calib", "random", "--calib-std", "1,0,1"], ("--calib-std",)),
    (["--min-snr", "30"], ("--min-snr", "fp32")),
    (["--precision", "int8", "--calib", "random", "--int8-ops", "some"], ("--int8-ops", "some")),
    (["--verify-backends", "torch"], ("torch", "ONNX")),
])
def test_unsupported_precision_pairs_are_one_line_errors_before_any_work(files, capsys, argv, names):
    code, err = run_main(files.args() + argv, capsys)
    assert_one_line_error(code, err, *names)
    assert not files.out.exists()


def test_every_backend_states_the_precisions_it_runs_fp32_first():
    for entry in BACKENDS.values():
        assert entry.precisions[0] == "fp32"
    with pytest.raises(RFDeployError, match="runs fp32, int8, not bf16 .bf16 runs on torch, torch-compile, openvino"):
        backend("onnxruntime").require_precision("bf16")


def test_calibration_batches_and_held_out_batches_never_overlap(tmp_path):
    path = tmp_path / "samples.npz"
    np.savez(path, input=np.arange(10 * 3 * 2 * 2, dtype=np.float32).reshape(10, 3, 2, 2))
    data = calibration_data(str(path), [(2, 3, 2, 2)], count=8, input_names=["input"])
    # 5 batches of 2: one held out (a fifth), the other four calibrate (fewer than asked, with a warning)
    assert len(data.calibration) == 4 and len(data.held_out) == 1 and data.warnings
    seen = [tuple(s.tensors[0][:, 0, 0, 0].tolist()) for s in data.calibration + data.held_out]
    assert len(set(seen)) == 5
    assert data.held_out[0].source == "samples.npz[8]..samples.npz[9]"  # a batch named by its samples
    with pytest.raises(RFDeployError, match="at least 2"):
        calibration_data(str(path), [(10, 3, 2, 2)], count=8, input_names=["input"])
    with pytest.raises(RFDeployError, match="K,3,4,4"):
        calibration_data(str(path), [(1, 3, 4, 4)], count=8, input_names=["input"])


def test_images_are_resized_cropped_and_normalised_as_configs_state(tmp_path):
    image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "images"
    folder.mkdir()
    for index, colour in enumerate([(10, 100, 200), (200, 50, 0), (0, 0, 0)]):
        image.new("RGB", (40, 20), colour).save(folder / f"{index}.png")
    preprocess = ImagePreprocess(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0))
    data = calibration_data(str(folder), [(1, 3, 8, 8)], count=2, preprocess=preprocess)
    first = data.calibration[0].tensors[0]
    assert first.shape == (1, 3, 8, 8)
    assert torch.equal(first[0, :, 0, 0], torch.tensor([(10 - 10) / 2, (100 - 20) / 4, (200 - 30) / 5]))
    bgr = calibration_data(str(folder), [(1, 3, 8, 8)], 2, preprocess=ImagePreprocess(mean=(0, 0, 0), std=(1, 1, 1),
                                                                                       bgr=True))
    assert bgr.calibration[0].tensors[0][0, :, 0, 0].tolist() == [200.0, 100.0, 10.0]


def bench_argv(files: Files, *extra: str) -> list[str]:
    return ["bench", "--model", MODEL, "--ckpt", str(files.ckpt), "--structure", str(files.structure),
            "--input-shape", SHAPE, "--warmup", "1", "--iters", "3", "--threads", "1", "--json", *extra]


def test_bench_times_every_backend_and_precision_in_one_run_with_snr_and_ratios(files, capsys):
    precisions = "fp32,bf16,int8" if HAS_BF16 else "fp32,int8"
    code = cli.main(bench_argv(files, "--backends", "onnxruntime,openvino", "--precisions", precisions, "--calib",
                               "random", "--calib-count", "4"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    rows = {(r["backend"], r["variant"], r["precision"]): r for r in data["results"]}
    expected = {("onnxruntime", "searched", "fp32"), ("onnxruntime", "compiled", "fp32"),
                ("onnxruntime", "compiled", "int8"), ("openvino", "searched", "fp32"),
                ("openvino", "compiled", "fp32"), ("openvino", "compiled", "int8")}
    if HAS_BF16:
        expected.add(("openvino", "compiled", "bf16"))
    assert set(rows) == expected
    assert data["skipped"] == (["onnxruntime bf16"] if HAS_BF16 else [])
    reference = rows[("onnxruntime", "searched", "fp32")]
    assert data["reference"] == "onnxruntime searched fp32" and reference["ratio"] == 1.0
    for row in rows.values():
        assert row["ratio"] == pytest.approx(row["p50_ms"] / reference["p50_ms"])
    for key in (("onnxruntime", "compiled", "fp32"), ("openvino", "compiled", "fp32")):
        assert rows[key]["max_rel_err"] < 1e-4 and rows[key]["snr_db"] > 80
    for key, row in rows.items():
        if key[2] != "fp32":
            assert 15 <= row["snr_db"] < 80, key
    assert all(section["calibration"]["random"] for section in data["int8"].values())
    assert set(data["int8"]) <= {"onnxruntime", "openvino"} and "onnxruntime" in data["int8"]



@pytest.mark.parametrize(("argv", "names"), [
    (["--backends", "onnxruntime", "--precisions", "bf16"], ("bf16", "openvino")),
    (["--backends", "onnxruntime", "--precisions", "fp32,int8"], ("--calib",)),
    (["--backends", "onnxruntime", "--precisions", "fp64"], ("fp64",)),
])
def test_bench_refuses_precisions_its_backends_cannot_run(files, capsys, argv, names):
    code, err = run_main(bench_argv(files, *argv), capsys)
    assert_one_line_error(code, err, *names)


def test_an_int8_engine_is_built_only_from_a_quantized_model(files):
    from rfdeploy.backends import tensorrt as trt_backend

    fp32 = api.export(MODEL, files.ckpt, files.structure, input_shapes=[(1, 3, 12, 12)], write=False).onnx_model
    request = trt_backend.EngineRequest(trt_backend.BuildOptions("int8"))
    with pytest.raises(RFDeployError, match="model.onnx: an int8 engine is built from a quantized .QDQ. model"):
        trt_backend.build(fp32.SerializeToString(), request, "model.onnx")


def test_tuning_at_int8_times_and_scores_each_lowering_quantized(files):
    result = api.export(MODEL, files.ckpt, files.structure, input_shapes=[(1, 3, 12, 12)], write=False,
                        tune="onnxruntime", precision=PrecisionRequest("int8", calib="random", calib_count=4))
    tuning = result.report["tuning"]
    assert tuning["precision"] == "int8" and tuning["layers"]
    for layer in tuning["layers"]:
        snr, ms = layer["snr_db"], layer["median_ms"]
        assert set(snr) == {"single", "multi", "searched"} and all(15 < v < 80 for v in snr.values())
        fastest = min(("single", "multi"), key=ms.__getitem__)
        other = "multi" if fastest == "single" else "single"
        if snr[other] - snr[fastest] > 3.0:
            assert (layer["chosen"], layer["decided_by"]) == (other, "accuracy")
        elif layer["decided_by"] == "speed":
            assert layer["chosen"] == fastest and ms[other] - ms[fastest] > 0
        else:  # tied on speed: the more accurate, else the simpler (single)
            assert layer["decided_by"] in ("accuracy", "simplicity")
            assert layer["chosen"] == (max(("single", "multi"), key=snr.__getitem__)
                                       if layer["decided_by"] == "accuracy" else "single")
        assert result.report["layers"][0]["lowering"] == layer["chosen"]
    assert result.report["precision"]["passed"]


def test_conv_matmul_op_set_quantizes_only_convs_and_matmuls(files):
    from rfdeploy.quantize.int8 import quantize_int8

    fp32 = api.export(MODEL, files.ckpt, files.structure, input_shapes=[(1, 3, 12, 12)], write=False).onnx_model
    sets = calibration_data("random", [(1, 3, 12, 12)], 4).calibration

    def computing_ops(model: onnx.ModelProto) -> list[str]:
        return sorted(node.op_type for node in model.graph.node if node.op_type not in ("QuantizeLinear", "DequantizeLinear"))

    # conv-matmul: every other node stays as it was, in fp32 between QDQ pairs; all: the ReLU is quantized
    # too, which onnxruntime's quantizer does by folding it into the conv's output range
    assert computing_ops(quantize_int8(fp32, sets, ops="conv-matmul")) == computing_ops(fp32) == ["Conv", "Conv", "Relu"]
    assert computing_ops(quantize_int8(fp32, sets, ops="all")) == ["Conv", "Conv"]


def test_float_input_op_sets_keep_the_layers_reading_the_input_in_fp32(files):
    from rfdeploy.quantize.int8 import int8_compute, quantize_int8

    fp32 = api.export(MODEL, files.ckpt, files.structure, input_shapes=[(1, 3, 12, 12)], write=False).onnx_model
    sets = calibration_data("random", [(1, 3, 12, 12)], 4).calibration
    first = next(node for node in fp32.graph.node if "input" in node.input)
    # the two convs share one (zero) bias: the first, in fp32, then reads the bias quantized for the second
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "shared_bias")
    fp32.graph.initializer.append(bias)
    for conv in [node for node in fp32.graph.node if node.op_type == "Conv"][:2]:
        conv.input[2] = "shared_bias"
    for ops in ("all", "conv-matmul"):
        whole, float_input = quantize_int8(fp32, sets, ops=ops), quantize_int8(fp32, sets, ops=f"{ops}-float-input")
        assert int8_compute(float_input)[0] == int8_compute(whole)[0] - 1
        reader = next(node for node in float_input.graph.node if node.name == first.name)
        assert reader.input[0] == "input"  # the graph input itself, not a dequantized copy
        assert not any(node.op_type == "QuantizeLinear" and node.input[0] == "input" for node in float_input.graph.node)


def activation_zero_points(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Per quantized activation (not a weight), the zero point of its QuantizeLinear."""
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return {node.input[0]: constants[node.input[2]] for node in model.graph.node
            if node.op_type == "QuantizeLinear" and node.input[0] not in constants}


def test_each_activation_format_stores_activations_as_its_backend_needs(files):
    from rfdeploy.quantize.int8 import quantize_int8

    fp32 = api.export(MODEL, files.ckpt, files.structure, input_shapes=[(1, 3, 12, 12)], write=False).onnx_model
    sets = calibration_data("random", [(1, 3, 12, 12)], 4).calibration
    uint8 = activation_zero_points(quantize_int8(fp32, sets, activations="uint8"))
    assert {z.dtype for z in uint8.values()} == {np.dtype("uint8")} and any(z != 0 for z in uint8.values())
    tensorrt = activation_zero_points(quantize_int8(fp32, sets, activations="int8"))
    assert {z.dtype for z in tensorrt.values()} == {np.dtype("int8")} and all(z == 0 for z in tensorrt.values())
    free = quantize_int8(fp32, sets, activations="zero-point-free")
    zero_points = activation_zero_points(free)
    assert all(z == 0 for z in zero_points.values())
    # uint8 exactly where the float model's tensor is never negative on the calibration data (the ReLU's)
    # a quantized graph output is written as OUTPUT_QuantizeLinear_Input
    float_name = {name: name.removesuffix("_QuantizeLinear_Input") for name in zero_points}
    probed = onnx.ModelProto()
    probed.CopyFrom(fp32)
    present = {output.name for output in fp32.graph.output} | {"input"}
    probed.graph.output.extend(onnx.ValueInfoProto(name=name) for name in set(float_name.values()) - present)
    session = ort.InferenceSession(probed.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    per_name = zip(names, zip(*(session.run(None, {"input": s.tensors[0].numpy()}) for s in sets)))
    lowest_float = {name: min(float(values.min()) for values in per_set) for name, per_set in per_name}
    lowest_float["input"] = min(float(s.tensors[0].min()) for s in sets)
    lowest = {name: lowest_float[float_name[name]] for name in zero_points}
    assert {name for name, z in zero_points.items() if z.dtype == np.uint8} == \
        {name for name in zero_points if lowest[name] >= 0} != set()
    assert {name for name, z in zero_points.items() if z.dtype == np.int8} == \
        {name for name in zero_points if lowest[name] < 0} != set()


def test_the_int8_model_is_made_in_the_format_of_where_it_runs(files):
    base = {"precision": "int8", "calib": "random", "calib_count": 4, "int8_ops": "all"}
    assert PrecisionRequest(**base).activations == "uint8"  # onnxruntime, the default
    assert PrecisionRequest(**base, target="openvino").activations == "zero-point-free"
    assert PrecisionRequest(**base, backends=("openvino",)).activations == "zero-point-free"
    assert PrecisionRequest(**base, builds_engine=True).activations == "int8"  # TensorRT's, whatever checks it
    result = api.export(MODEL, files.ckpt, files.structure, input_shapes=[(1, 3, 12, 12)], write=False,
                        precision=PrecisionRequest(**base), target="openvino")
    assert result.report["precision"]["activations"]["format"] == "zero-point-free" and result.passed
    assert all(z == 0 for z in activation_zero_points(result.precision.model).values())


def input_scale(model: onnx.ModelProto) -> float:
    """The scale of the QuantizeLinear that rounds the graph input."""
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    node = next(node for node in model.graph.node if node.op_type == "QuantizeLinear" and node.input[0] == "input")
    return float(constants[node.input[1]])


def test_calibration_in_chunks_sets_the_ranges_one_pass_sets(files):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from rfdeploy.quantize.int8 import CALIBRATION_CHUNK, InputReader, quantize_int8

    fp32 = api.export(MODEL, files.ckpt, files.structure, input_shapes=[(1, 3, 12, 12)], write=False).onnx_model
    sets = calibration_data("random", [(1, 3, 12, 12)], 6).calibration
    assert len(sets) // CALIBRATION_CHUNK > 1  # several chunks
    onnx.save(fp32, files.root / "fp32.onnx")
    quantize_static(files.root / "fp32.onnx", files.root / "one-pass.onnx", InputReader(["input"], sets),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    one_pass = onnx.load(files.root / "one-pass.onnx")
    chunked = quantize_int8(fp32, sets, method="minmax")
    scales = {name: [numpy_helper.to_array(init) for init in model.graph.initializer if init.name.endswith("_scale")]
              for name, model in (("one pass", one_pass), ("chunked", chunked))}
    assert len(scales["chunked"]) == len(scales["one pass"]) > 0
    for a, b in zip(scales["chunked"], scales["one pass"]):
        assert np.array_equal(a, b)


def test_percentile_ranges_are_not_set_by_one_outlier_value(files):
    from rfdeploy.measure.verify import InputSet
    from rfdeploy.quantize.int8 import quantize_int8

    shape = (1, 3, 64, 64)
    fp32 = api.export(MODEL, files.ckpt, files.structure, input_shapes=[shape], write=False).onnx_model
    sets = calibration_data("random", [shape], 32).calibration
    outlier = sets[0].tensors[0].clone()
    outlier[0, 0, 0, 0] = 1000.0
    sets[0] = InputSet("one outlier", (outlier,))
    minmax, percentile = (input_scale(quantize_int8(fp32, sets, method)) for method in ("minmax", "percentile"))
    assert minmax > 1000 / 255 * 0.9  # min-max stretches the range to the one value
    assert percentile < minmax / 50  # 99.999% of 393,216 input values (0.0005% cut on each side): the outlier is


def test_int8_export_times_each_op_set_and_keeps_it_by_the_rule_that_decided(files):
    from rfdeploy.measure.timing import SNR_TIE_DB
    from rfdeploy.precision import SNR_MARGIN_DB
    from rfdeploy.quantize.int8 import OP_SETS

    result = api.export(MODEL, files.ckpt, files.structure, input_shapes=[(1, 3, 12, 12)], write=False,
                        precision=PrecisionRequest("int8", calib="random", calib_count=4))
    ops = result.report["precision"]["quantized_ops"]
    assert set(ops["median_ms"]) == set(OP_SETS) and ops["backend"] == "onnxruntime"
    best_snr = max(ops["snr_db"].values())
    acceptable = [name for name in OP_SETS if best_snr - ops["snr_db"][name] <= SNR_MARGIN_DB]
    fastest = min(acceptable, key=ops["median_ms"].__getitem__)
    assert ops["kept"] in acceptable and ops["decided_by"] in ("speed", "accuracy", "simplicity")

    def within_spread(name: str) -> bool:
        spread = max(ops["spread_ms"][fastest], ops["spread_ms"][name])
        return ops["median_ms"][name] - ops["median_ms"][fastest] <= spread

    tied = [name for name in acceptable if within_spread(name)]
    if ops["decided_by"] == "speed":  # faster than every other by more than the spread of the rounds
        assert ops["kept"] == fastest and tied == [fastest]
    else:  # among those as fast: the most accurate, or of those as accurate the simplest (fewest nodes)
        assert ops["kept"] in tied
        if ops["decided_by"] == "simplicity":
            assert all(ops["nodes"][ops["kept"]] <= ops["nodes"][name] for name in tied
                       if abs(ops["snr_db"][name] - ops["snr_db"][ops["kept"]]) <= SNR_TIE_DB)
        elif len(tied) > 1:
            assert ops["snr_db"][ops["kept"]] == max(ops["snr_db"][name] for name in tied)
    assert ops["rounds"] >= 5


def test_an_int8_export_serves_the_int8_model_in_triton(files, capsys):
    repo = files.root / "repo"
    code, err = run_main(files.args() + ["--precision", "int8", "--calib", "random", "--calib-count", "4",
                                         "--triton", str(repo), "--triton-name", "tiny"], capsys)
    assert code == 0, err
    served = repo / "tiny" / "1" / "model.onnx"
    assert served.read_bytes() == (files.out / "model.int8.onnx").read_bytes()


def test_output_ranking_costs_a_tensor_by_the_snr_its_quantization_takes_from_the_outputs(files):
    from rfdeploy.backends import make_runner
    from rfdeploy.measure.verify import Reference, compare_on
    from rfdeploy.quantize.int8 import quantize_int8
    from rfdeploy.quantize.mixed_precision import output_costs

    loaded = api.load(MODEL, files.ckpt, files.structure)
    fp32 = api.export(MODEL, files.ckpt, files.structure, input_shapes=[(1, 3, 12, 12)], write=False).onnx_model
    data = calibration_data("random", [(1, 3, 12, 12)], 4)
    int8 = quantize_int8(fp32, data.calibration)
    reference = Reference(loaded.searched)

    def snr_of(model):
        with make_runner("onnxruntime", None, [], onnx_model=model, precision="int8") as runner:
            return compare_on(runner, reference, data.held_out).snr_db

    base = snr_of(int8)
    costs = output_costs(fp32, int8, snr_of, base)
    quantized = {n.input[0] for n in int8.graph.node if n.op_type == "QuantizeLinear"} - \
        {i.name for i in int8.graph.initializer}
    # every quantized activation, the input and the output too (named as in the float graph)
    assert {c.tensor for c in costs} == {t.removesuffix("_QuantizeLinear_Input") for t in quantized}
    assert [c.cost_db for c in costs] == sorted((c.cost_db for c in costs), reverse=True)
    outputs = {o.name for o in fp32.graph.output}
    top = next(c for c in costs if c.tensor not in outputs)
    # the same tensor unquantized another way: the readers of its DequantizeLinear read it directly
    bypassed = onnx.ModelProto()
    bypassed.CopyFrom(int8)
    quantize_outputs = {n.output[0] for n in bypassed.graph.node if n.op_type == "QuantizeLinear"
                        and n.input[0] == top.tensor}
    dequantized = {n.output[0] for n in bypassed.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[0] in quantize_outputs}
    for node in bypassed.graph.node:
        for index, name in enumerate(node.input):
            if name in dequantized:
                node.input[index] = top.tensor
    assert top.cost_db == pytest.approx(snr_of(bypassed) - base, abs=1e-6)


def test_a_folder_of_images_calibrates_and_its_later_images_are_held_out(files, capsys):
    image = pytest.importorskip("PIL.Image")
    folder = files.root / "images"
    folder.mkdir()
    generator = np.random.default_rng(5)
    for index in range(10):
        pixels = generator.integers(0, 256, (20 + index, 16, 3), dtype=np.uint8)
        image.fromarray(pixels).save(folder / f"{index:04d}.png")
    code, err = run_main(files.args() + ["--precision", "int8", "--calib", str(folder), "--calib-count", "8"], capsys)
    assert code == 0, err
    calibration = json.loads((files.out / "report.json").read_text())["precision"]["calibration"]
    assert calibration["calibration_sets"] == 8 and not calibration["random"]
    assert calibration["held_out_sets"] == ["images/0008.png", "images/0009.png"]


def test_an_int8_model_an_engine_is_built_from_is_made_in_tensorrts_format():
    from rfdeploy.backends import tensorrt as trt_backend
    from rfdeploy.stages.export import ExportRequest, checked

    int8 = PrecisionRequest("int8", calib="random")
    with_engine = checked(ExportRequest(engine=trt_backend.EngineRequest(), precision=int8))
    assert with_engine.precision is not None and with_engine.precision.activations == "int8"
    without = checked(ExportRequest(precision=int8))
    assert without.precision is not None and without.precision.activations == "uint8"
