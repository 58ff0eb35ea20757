"""wan.evaluation: each measure against an independent computation of its definition, known cases, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wan.errors import UserFacingError
from wan.evaluation import (
    FaceTrack,
    SyncNet,
    cosine_similarity,
    crop_track,
    frechet_distance,
    load_syncnet,
    measure_identity,
    measure_sync,
    mfcc,
    offset_distances,
    sync_scores,
    track_faces,
)


# ---- MFCC -------------------------------------------------------------------------------------------------
def _mfcc_by_definition(waveform: np.ndarray) -> np.ndarray:
    """Frame by frame, with explicit sums: pre-emphasis, 25 ms frames every 10 ms, |DFT|^2 / 512, triangular
    mel filters on whole bins, log, DCT-II (orthonormal), lifter 22, c0 := log energy."""
    x = np.clip(np.round(waveform * 32768.0), -32768, 32767)
    x = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    frames = 1 + math.ceil((len(x) - 400) / 160)
    x = np.concatenate([x, np.zeros((frames - 1) * 160 + 400 - len(x))])
    mel = lambda hz: 2595 * math.log10(1 + hz / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    points = [math.floor(513 * hz(mel(8000) * i / 27) / 16000) for i in range(28)]
    n = np.arange(512)
    out = np.zeros((13, frames))
    for f in range(frames):
        frame = np.concatenate([x[f * 160 : f * 160 + 400], np.zeros(112)])
        power = np.array(
            [abs((frame * np.exp(-2j * np.pi * k * n / 512)).sum()) ** 2 / 512 for k in range(257)]
        )
        energies = []
        for j in range(26):
            lo, mid, hi = points[j : j + 3]
            e = sum(power[i] * (i - lo) / (mid - lo) for i in range(lo, mid))
            e += sum(power[i] * (hi - i) / (hi - mid) for i in range(mid, hi))
            energies.append(math.log(e))
        for c in range(13):
            scale = math.sqrt(1 / 26) if c == 0 else math.sqrt(2 / 26)
            value = scale * sum(energies[j] * math.cos(math.pi * c * (2 * j + 1) / 52) for j in range(26))
            out[c, f] = value * (1 + 11 * math.sin(math.pi * c / 22))
        out[0, f] = math.log(power.sum())
    return out


def test_mfcc_matches_the_definition_computed_term_by_term():
    rng = np.random.default_rng(0)
    waveform = rng.normal(0, 0.1, 16000 // 20)  # 50 ms: 1 + ceil((800 - 400) / 160) = 4 frames
    ours = mfcc(waveform)
    assert ours.shape == (13, 4)
    np.testing.assert_allclose(ours, _mfcc_by_definition(waveform), rtol=1e-7, atol=1e-7)


def test_mfcc_gives_100_frames_per_second():
    assert mfcc(np.random.default_rng(1).normal(0, 0.1, 16000)).shape == (13, 99)


# ---- SyncNet ----------------------------------------------------------------------------------------------
def test_syncnet_streams_give_one_embedding_per_window_and_published_names(tmp_path):
    torch.manual_seed(0)
    tiny = SyncNet(width=1 / 16, embedding_dim=8).eval()
    assert tiny.forward_lip(torch.rand(2, 3, 5, 224, 224) * 255).shape == (2, 8)
    assert tiny.forward_audio(torch.randn(2, 1, 13, 20)).shape == (2, 8)
    full = SyncNet()
    names = set(full.state_dict())
    # the layer positions of the public model's state dict (convolutions of both streams, heads)
    for name in [
        "netcnnaud.0.weight",
        "netcnnaud.18.weight",
        "netcnnlip.0.weight",
        "netcnnlip.18.weight",
        "netcnnlip.19.running_mean",
        "netfcaud.3.weight",
        "netfclip.1.running_var",
    ]:
        assert name in names
    assert full.netcnnlip[18].weight.shape == (512, 256, 1, 6, 6)
    assert full.netcnnaud[18].weight.shape == (512, 256, 5, 4)
    path = tmp_path / "syncnet_v2.model"
    torch.save(full.state_dict(), path)
    loaded = load_syncnet(path)
    assert not loaded.training
    assert torch.equal(loaded.netfclip[3].weight, full.netfclip[3].weight)


def test_bad_syncnet_weights_are_refused_in_one_line(tmp_path):
    with pytest.raises(UserFacingError, match="not found"):
        load_syncnet(tmp_path / "missing.model")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserFacingError, match="not a SyncNet state dict"):
        load_syncnet(tmp_path / "other.pt")


# ---- Sync-C / Sync-D / offset ------------------------------------------------------------------------------
def _public_arithmetic(video: torch.Tensor, audio: torch.Tensor, vshift: int):
    """The public evaluation's steps: pad the audio features by vshift rows each side, distance of video row
    i to padded rows i .. i + 2 vshift, mean over i, offset = vshift - argmin, confidence = median - min."""
    padded = F.pad(audio, (0, 0, vshift, vshift))
    dists = [
        F.pairwise_distance(video[[i], :].repeat(2 * vshift + 1, 1), padded[i : i + 2 * vshift + 1])
        for i in range(len(video))
    ]
    mean = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mean, 0)
    return vshift - int(minidx), float(torch.median(mean) - minval), float(minval)


@pytest.mark.parametrize("shift", [0, 3, -5])
def test_sync_scores_equal_the_public_arithmetic(shift):
    generator = torch.Generator().manual_seed(shift + 10)
    video = torch.randn(40, 16, generator=generator)
    audio = torch.roll(video, -shift, 0) + 0.3 * torch.randn(40, 16, generator=generator)
    result = sync_scores(offset_distances(video, audio, 15), 15)
    offset, confidence, minimum = _public_arithmetic(video, audio, 15)
    assert result.offset == offset == shift
    assert result.sync_c == pytest.approx(confidence, abs=1e-6)
    assert result.sync_d == pytest.approx(minimum, abs=1e-6)
    assert result.mean_distances.shape == (31,)
    assert len(result.framewise_confidence) == 40


class _LoudnessSyncNet(SyncNet):
    """A synthetic distance model: the lip stream reads each frame's brightness, the audio stream each video
    frame's mean MFCC log energy (c0); both standardised, so matching windows are close."""

    def __init__(self) -> None:
        super().__init__(width=1 / 64, embedding_dim=2)

    @staticmethod
    def _standardise(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-6)

    def forward_lip(self, frames):
        return self._standardise(frames.mean(dim=(1, 3, 4)))

    def forward_audio(self, mfcc_windows):
        return self._standardise(mfcc_windows[:, 0, 0].reshape(-1, 5, 4).mean(-1))


@pytest.mark.parametrize("shift", [0, 2, -3])
def test_a_video_and_its_own_audio_shifted_by_k_frames_gives_offset_k(shift):
    """Frame t of the video is as bright as the audio around frame t - shift is loud."""
    rng = np.random.default_rng(5)
    frames = 120
    amplitude = rng.uniform(0.02, 0.8, frames + 20)
    waveform = np.concatenate([rng.normal(0, a, 640) for a in amplitude[10 : 10 + frames]])
    level = np.log(amplitude)
    brightness = 40 + 30 * (level - level.min())
    shown = brightness[10 - shift : 10 - shift + frames]  # frame t shows audio frame t - shift
    crops = np.repeat(shown[:, None, None, None], 3, axis=3).repeat(8, 1).repeat(8, 2).astype(np.uint8)
    result = measure_sync(_LoudnessSyncNet(), crops, waveform)
    assert result.offset == shift
    assert result.sync_c > 0.5


def test_silent_audio_and_too_short_clips_are_refused():
    crops = np.zeros((30, 8, 8, 3), np.uint8)
    with pytest.raises(UserFacingError, match="silent"):
        measure_sync(_LoudnessSyncNet(), crops, np.zeros(30 * 640))
    with pytest.raises(UserFacingError, match="at least 6"):
        measure_sync(_LoudnessSyncNet(), crops[:5], np.ones(5 * 640) * 0.1)


# ---- face track and crop ----------------------------------------------------------------------------------
def test_tracks_fill_gaps_and_split_on_jumps():
    box = np.array([10.0, 10.0, 30.0, 30.0])
    detections = [[box + i] for i in range(10)]
    detections[4] = []  # one missed frame: interpolated
    detections += [[box + 100]] * 3  # a different place: another track
    tracks = track_faces(detections)
    assert [len(t.frames) for t in tracks] == [10, 3]
    np.testing.assert_allclose(tracks[0].boxes[4], box + 4)


def test_crop_follows_the_public_geometry():
    """Constant box of half-size s centred at (cx, cy): rows cy - s .. cy + 1.8 s, columns cx +- 1.4 s."""
    import cv2

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (15, 200, 200, 3), dtype=np.uint8)
    box = np.array([80.0, 60.0, 120.0, 100.0])  # s = 20, centre (100, 80)
    crops = crop_track(frames, FaceTrack(np.arange(15), np.repeat(box[None], 15, 0)))
    expected = cv2.resize(frames[7][60:116, 72:128], (224, 224))
    np.testing.assert_array_equal(crops[7], expected)


def test_the_synthetic_face_is_found_and_a_blank_video_is_refused(tmp_path):
    from wan.evaluation import face_crops
    from wan.training.synthetic import FaceStyle, draw_face

    style = FaceStyle.random(np.random.default_rng(777_000_001), 1.0)
    frames = np.stack([np.asarray(draw_face(style, (64, 64), 0.5, True, (0.0, 0.0))[0]) for _ in range(3)])
    crops, track = face_crops(frames)
    assert crops.shape == (3, 224, 224, 3) and len(track.frames) == 3
    x0, y0, x1, y1 = track.boxes[0]
    assert x0 < 32 < x1 and y0 < 40 < y1  # the box holds the face centre
    with pytest.raises(UserFacingError, match="no face found"):
        face_crops(np.full((3, 64, 64, 3), 200, np.uint8), "blank.mp4")


# ---- identity ---------------------------------------------------------------------------------------------
def test_identity_per_second_and_trend_against_direct_computation():
    rng = np.random.default_rng(2)

    class MeanColour:
        name = "mean colour"

        def __call__(self, crops):
            return crops.reshape(len(crops), -1, 3).mean(1) + 1.0

    crops = rng.integers(0, 255, (75, 4, 4, 3)).astype(np.uint8)
    reference = rng.integers(0, 255, (4, 4, 3)).astype(np.uint8)
    result = measure_identity(MeanColour(), crops, reference, fps=25, samples_per_second=5)
    features = crops.reshape(75, -1, 3).mean(1) + 1.0
    ref = reference.reshape(-1, 3).mean(0) + 1.0
    cos = [(f @ ref) / np.linalg.norm(f) / np.linalg.norm(ref) for f in features[::5]]
    expected = [np.mean(cos[s * 5 : s * 5 + 5]) for s in range(3)]
    np.testing.assert_allclose(result.per_second, expected)
    slope = np.polyfit([0, 1, 2], expected, 1)[0]
    assert result.drop_per_minute == pytest.approx(-slope * 60)
    assert cosine_similarity(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([2.0, 0.0])) == pytest.approx(
        [1, 2**-0.5]
    )


def test_dinov2_embedder_gives_similarity_one_for_the_same_face():
    from transformers import Dinov2Config

    from wan.evaluation import Dinov2Embedder

    tiny = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=224
    )
    embedder = Dinov2Embedder(config=tiny)
    crop = np.random.default_rng(3).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    result = measure_identity(embedder, np.repeat(crop[None], 5, 0), crop, fps=5, samples_per_second=5)
    assert result.mean == pytest.approx(1.0, abs=1e-5)


def _linear_onnx(path: Path, weight: np.ndarray, shape: list[int]) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("MatMul", ["f", "w"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)


def test_arcface_onnx_embedder_feeds_112px_rgb_scaled_to_plus_minus_one(tmp_path):
    from wan.evaluation import ArcFaceEmbedder

    weight = np.random.default_rng(4).normal(size=(3 * 112 * 112, 6))
    _linear_onnx(tmp_path / "arc.onnx", weight, [1, 3, 112, 112])
    crop = np.random.default_rng(5).integers(0, 255, (112, 112, 3)).astype(np.uint8)
    ours = ArcFaceEmbedder(tmp_path / "arc.onnx")(crop[None])
    expected = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1).reshape(1, -1) @ weight
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-3)


# ---- FID / FVD --------------------------------------------------------------------------------------------
def test_frechet_distance_against_the_symmetric_form():
    rng = np.random.default_rng(6)
    real, fake = rng.normal(0, 1, (200, 4)), rng.normal(0.5, 2, (150, 4)) @ rng.normal(size=(4, 4))
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    values, vectors = np.linalg.eigh(cov_r)
    root_r = vectors @ np.diag(np.sqrt(values)) @ vectors.T
    inner = np.linalg.eigvalsh(root_r @ cov_f @ root_r)  # tr sqrt(S_r S_f) = tr sqrt(S_r^1/2 S_f S_r^1/2)
    expected = ((mu_r - mu_f) ** 2).sum() + np.trace(cov_r) + np.trace(cov_f) - 2 * np.sqrt(inner).sum()
    assert frechet_distance(real, fake) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)


def test_fvd_features_read_consecutive_clips_of_the_declared_length(tmp_path):
    from wan.evaluation import ClipFeatures

    weight = np.random.default_rng(7).normal(size=(3 * 4 * 8 * 8, 3))
    _linear_onnx(tmp_path / "i3d.onnx", weight, [1, 3, 4, 8, 8])
    frames = np.random.default_rng(8).integers(0, 255, (9, 8, 8, 3)).astype(np.uint8)
    features = ClipFeatures(tmp_path / "i3d.onnx")(frames)
    clip = (frames[4:8].astype(np.float32) / 255).transpose(3, 0, 1, 2).reshape(1, -1)
    assert features.shape == (2, 3)
    np.testing.assert_allclose(features[1], (clip @ weight)[0], rtol=1e-4, atol=1e-4)


# ---- the command line -------------------------------------------------------------------------------------
def _write_video(path: Path, seconds: float, audio_seconds: float | None, silent: bool = False) -> None:
    from wan.media import VideoWriter
    from wan.training.synthetic import FaceStyle, draw_face, speech_audio

    style = FaceStyle.random(np.random.default_rng(1), 1.0)
    audio_length = seconds if audio_seconds is None else audio_seconds
    audio = (
        np.zeros(int(audio_length * 16000))
        if silent
        else speech_audio(audio_length, np.random.default_rng(2))
    )
    frame = np.asarray(draw_face(style, (64, 64), 0.4, True, (0.0, 0.0))[0])
    with VideoWriter(path, fps=25, audio=audio if audio_seconds is None else None) as writer:
        writer.write(np.repeat(frame[None], int(seconds * 25), 0))
    if audio_seconds is not None:
        import soundfile

        soundfile.write(path.with_suffix(".wav"), audio, 16000)


def test_cli_bad_input_gives_one_line_errors(tmp_path, capsys):
    from benchmarks.evaluate import main

    assert main(["--videos", str(tmp_path / "none"), "--output", str(tmp_path / "out")]) == 2
    assert "no videos" in capsys.readouterr().err
    videos, audio = tmp_path / "videos", tmp_path / "audio"
    videos.mkdir()
    audio.mkdir()
    _write_video(videos / "short.mp4", 1.0, 2.0)
    (videos / "short.wav").rename(audio / "short.wav")
    args = [
        "--videos",
        str(videos),
        "--audio",
        str(audio),
        "--syncnet",
        "random",
        "--output",
        str(tmp_path / "o"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "differ by 1.00 s" in err and len(err.splitlines()) == 1
    (audio / "short.wav").unlink()
    _write_video(videos / "short.mp4", 1.0, None, silent=True)
    assert main(args[:2] + args[4:]) == 2
    assert "silent" in capsys.readouterr().err
