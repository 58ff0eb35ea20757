"""Windows-outer sampling and streaming generation: audio in chunks, video out window by window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wan.errors import UserFacingError
from wan.pipeline.decoding import StreamingDecoder, stream_decode
from wan.pipeline.encoders import encode_audio
from wan.pipeline.guidance import PublishedGuidance
from wan.pipeline.pipeline import StableAvatarPipeline
from wan.pipeline.sampler import SamplingConditions, SlidingWindowSampler
from wan.pipeline.streaming import AudioStream, FrameNoise, streaming_windows
from wan.pipeline.tiny import build_tiny_pipeline
from wan.pipeline.windows import Window, latent_frames_for_video, plan_windows
from wan.pipeline.windows_outer import WindowsOuterSampler

SIZE = 32
SPF = 640  # samples per video frame at 25 fps
CLIP = 13  # 4 latent frames per window: several windows stay cheap
OVERLAP = 1
SETTINGS = dict(
    height=SIZE,
    width=SIZE,
    num_inference_steps=2,
    clip_length=CLIP,
    overlap=OVERLAP,
    seed=5,
    prompt="talking",
)


@pytest.fixture(scope="module")
def pipe() -> StableAvatarPipeline:
    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    from skimage.data import astronaut

    return astronaut()


def _speechlike(num_samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    envelope = 0.5 + 0.5 * np.sin(np.arange(num_samples) / 16000 * 2 * np.pi * 3)
    return (rng.standard_normal(num_samples) * 0.1 * envelope).astype(np.float32)


def _chunks(waveform: np.ndarray, seed: int = 1, largest: int = 5000):
    """The waveform cut at random places (chunks of 1 to `largest` samples, some empty)."""
    rng = np.random.default_rng(seed)
    start = 0
    while start < len(waveform):
        size = int(rng.integers(0, largest))
        yield waveform[start : start + size]
        start += size


def _conditions(window_length: int, seed: int = 0) -> SamplingConditions:
    generator = torch.Generator().manual_seed(seed)
    return SamplingConditions(
        prompt_embeds=torch.randn(1, 7, 32, generator=generator),
        negative_prompt_embeds=torch.randn(1, 5, 32, generator=generator),
        image_embeds=torch.randn(1, 257, 32, generator=generator),
        condition=torch.randn(1, 20, window_length, 4, 4, generator=generator),
    )


def _model_conditions(pipe: StableAvatarPipeline, window_length: int) -> SamplingConditions:
    """Random conditions of the tiny model's text and image widths."""
    conditions = _conditions(window_length)
    conditions.prompt_embeds = torch.randn(1, 7, pipe.transformer.config.text_dim)
    conditions.negative_prompt_embeds = torch.randn(1, 5, pipe.transformer.config.text_dim)
    conditions.image_embeds = torch.randn(1, 257, pipe.transformer.config.image_dim)
    return conditions


def test_windows_outer_with_zero_overlap_equals_each_window_sampled_alone(pipe) -> None:
    window_length, windows = 3, 3
    conditions = _conditions(window_length)
    conditions.prompt_embeds = conditions.prompt_embeds[..., : pipe.transformer.config.text_dim]
    conditions.negative_prompt_embeds = conditions.negative_prompt_embeds[
        ..., : pipe.transformer.config.text_dim
    ]
    conditions.image_embeds = torch.randn(1, 257, pipe.transformer.config.image_dim)
    noise = torch.randn(1, 16, window_length * windows, 4, 4, generator=torch.Generator().manual_seed(1))
    audio = {k: torch.randn(1, 4 * window_length * 2, 768) for k in range(windows)}
    options = dict(
        window_length=window_length, overlap=0, guidance=PublishedGuidance(text_scale=2.0, audio_scale=3.0)
    )

    together = WindowsOuterSampler(pipe.transformer, pipe.scheduler, **options)(
        noise, conditions, lambda w: audio[w.start // window_length], 3, progress=False
    )
    alone = SlidingWindowSampler(pipe.transformer, pipe.scheduler, **options)
    for k in range(windows):
        frames = slice(k * window_length, (k + 1) * window_length)
        single = alone(noise[:, :, frames], conditions, lambda w, k=k: audio[k], 3, progress=False)
        torch.testing.assert_close(together[:, :, frames], single, rtol=0, atol=1e-6)
    assert not torch.allclose(
        together[:, :, :window_length], together[:, :, window_length : 2 * window_length]
    )


def test_windows_outer_continues_from_the_previous_window(pipe) -> None:
    """With overlap the known prefix is kept (exactly without blending; with blending its last `held_frames`
    ramp to the window's own prediction) and the next window depends on it."""
    conditions = _model_conditions(pipe, 4)
    sampler = WindowsOuterSampler(pipe.transformer, pipe.scheduler, window_length=4, overlap=2)
    noise = torch.randn(1, 16, 6, 4, 4, generator=torch.Generator().manual_seed(2))
    audio = torch.randn(1, 32, 768)
    whole = sampler(noise, conditions, lambda w: audio, 2, progress=False)
    for prefix in ("renoise", "condition", "both"):
        options = dict(window_length=4, overlap=2, prefix=prefix)
        known = torch.randn(1, 16, 2, 4, 4)
        window = Window(2, 6, 2)
        kept = WindowsOuterSampler(pipe.transformer, pipe.scheduler, blend_overlap=False, **options)
        second = kept.denoise_window(noise[:, :, 2:], conditions, audio, window, known, 2)
        assert kept.held_frames == 0 and torch.equal(second[:, :, :2], known)
        # the frames after the prefix depend on it
        assert (second[:, :, 2:] - whole[:, :, 4:]).abs().max() > 1e-4, prefix

        blended = WindowsOuterSampler(pipe.transformer, pipe.scheduler, blend_overlap=True, **options)
        assert blended.held_frames == 2
        joined = blended.denoise_window(noise[:, :, 2:], conditions, audio, window, known, 2)
        # uniform ramp over 2 frames: the previous window's first frame, then the new window's own
        assert torch.equal(joined[:, :, :1], known[:, :, :1])
        assert (joined[:, :, 1] - known[:, :, 1]).abs().max() > 1e-3, prefix
        # by default only 'renoise' blends (measured worse through the condition channels)
        default = WindowsOuterSampler(pipe.transformer, pipe.scheduler, **options)
        assert default.blend_overlap == (prefix == "renoise")


def test_renoise_blends_the_held_frames_at_every_step(pipe) -> None:
    """As the published order fuses overlaps at every step, the re-noised prefix's held frames are ramped
    towards the window's own latents before every step: the model sees the ramp, so the frames after the
    prefix differ from a window that blends only its result."""
    conditions = _model_conditions(pipe, 4)
    noise = torch.randn(1, 16, 4, 4, 4, generator=torch.Generator().manual_seed(4))
    known, audio, window = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 32, 768), Window(2, 6, 2)
    results = {}
    for blend in (True, False):
        sampler = WindowsOuterSampler(
            pipe.transformer, pipe.scheduler, window_length=4, overlap=2, blend_overlap=blend
        )
        results[blend] = [sampler.denoise_window(noise, conditions, audio, window, known, n) for n in (1, 3)]
    one_step_blended, one_step_kept = results[True][0], results[False][0]
    # one step: the prefix is pure noise, so only the result's ramp differs
    torch.testing.assert_close(one_step_blended[:, :, 2:], one_step_kept[:, :, 2:], rtol=0, atol=0)
    assert (results[True][1][:, :, 2:] - results[False][1][:, :, 2:]).abs().max() > 1e-4


def test_a_larger_last_overlap_blends_only_the_held_frames(pipe) -> None:
    """The last window (aligned to the end) may overlap more than `overlap`; frames before the held ones went
    out already, so they stay as the previous window made them."""
    conditions = _model_conditions(pipe, 5)
    sampler = WindowsOuterSampler(pipe.transformer, pipe.scheduler, window_length=5, overlap=3)
    noise = torch.randn(1, 16, 5, 4, 4, generator=torch.Generator().manual_seed(3))
    known = torch.randn(1, 16, 4, 4, 4)
    joined = sampler.denoise_window(noise, conditions, torch.randn(1, 40, 768), Window(3, 8, 4), known, 1)
    assert torch.equal(joined[:, :, :2], known[:, :, :2])  # not held, and weight 0 of the ramp
    assert (joined[:, :, 2:4] - known[:, :, 2:4]).flatten(2).abs().amax(-1).min() > 1e-3


def test_frame_noise_does_not_depend_on_the_length() -> None:
    noise = FrameNoise(7, 16, 4, 4)
    first = noise.frames(0, 5)
    again = FrameNoise(7, 16, 4, 4)
    assert torch.equal(again.frames(0, 2), first[:, :, :2])
    assert torch.equal(again.frames(1, 5), first[:, :, 1:])


@pytest.mark.parametrize("num_frames", [1, 7, 13, 29, 30, 44, 61])
def test_streamed_windows_are_the_whole_audios_plan(num_frames: int) -> None:
    """Windows go out as soon as their audio is in, and together they are `plan_windows` of the whole."""
    waveform = np.zeros(num_frames * SPF + 17, np.float32)
    audio = AudioStream(_chunks(waveform), SPF)
    got = []
    for window, is_last, total in streaming_windows(audio, 4, OVERLAP):
        got.append(window)
        if not is_last and total is None:  # went out before the end: its audio had arrived
            assert audio.received >= window.end * 4 * SPF and not audio.ended
    assert got == plan_windows(latent_frames_for_video(num_frames), 4, OVERLAP)


def test_chunked_audio_gives_each_window_the_features_of_the_whole_file(pipe) -> None:
    """A window's features need only that window's samples: once they are in, the window's audio is
    bit-identical to the whole file's, so its features are the same computation on the same numbers
    (exact equality; no float tolerance is needed or used)."""
    waveform = _speechlike(53 * SPF + 100)
    audio = AudioStream(_chunks(waveform, seed=3, largest=3000), SPF)
    count = 0
    for window, _, _ in streaming_windows(audio, 4, OVERLAP):
        streamed = encode_audio(pipe.audio_encoder, pipe.audio_feature_extractor, audio.window(window))
        whole = pipe._window_audio(waveform, window, 25)
        assert torch.equal(streamed, whole)
        audio.drop_before(4 * (window.start + 1) * SPF)
        count += 1
    assert count == len(plan_windows(latent_frames_for_video(53), 4, OVERLAP)) > 3


def test_audio_stream_keeps_memory_flat() -> None:
    """After each window only the samples later windows need are kept."""
    audio = AudioStream((np.zeros(1000, np.float32) for _ in range(2000)), SPF)  # 125 s
    largest = 0
    for window, _, _ in streaming_windows(audio, 4, OVERLAP):
        audio.window(window)
        audio.drop_before(4 * (window.start + 1) * SPF)
        largest = max(largest, len(audio._buffer))
    assert largest < 8 * 4 * SPF + 1000


@pytest.mark.parametrize(
    ("num_frames", "overlap", "blend"),
    # overlap 2: the last 2 of each window are blended, so held back until the next window
    [(6, OVERLAP, True), (29, OVERLAP, True), (29, 2, True), (30, 2, True), (29, 2, False)],
)
def test_chunked_audio_gives_the_same_video_as_the_whole_file(
    pipe, image, num_frames, overlap, blend
) -> None:
    settings = {**SETTINGS, "overlap": overlap, "blend_overlap": blend}
    waveform = _speechlike(num_frames * SPF + 123, seed=num_frames)
    whole = pipe(image, waveform, output_type="latent", sampling_order="windows", progress=False, **settings)
    pieces = list(pipe.stream(image, _chunks(waveform, seed=num_frames), **settings))

    latents = torch.cat([piece.latents for piece in pieces], dim=2)
    torch.testing.assert_close(latents, whole.latents, rtol=0, atol=1e-5)
    frames = torch.cat([piece.frames for piece in pieces])
    assert len(frames) == num_frames == whole.num_frames
    assert [piece.first_frame for piece in pieces] == np.cumsum(
        [0] + [len(p.frames) for p in pieces[:-1]]
    ).tolist()
    expected = torch.cat(list(stream_decode(pipe.vae, whole.latents)), dim=2)[0].permute(1, 2, 3, 0)
    torch.testing.assert_close(frames, expected[:num_frames], rtol=0, atol=1e-5)
    audio = np.concatenate([piece.audio for piece in pieces])
    np.testing.assert_array_equal(audio, waveform[: num_frames * SPF])
    # one piece per latent frame, grouped by the window that made it final
    assert all(piece.latents.shape[2] == 1 for piece in pieces) and len(pieces) == whole.latents.shape[2]
    assert len(pieces[0].frames) == 1 and all(len(piece.frames) <= 4 for piece in pieces)
    windows = [piece.window for piece in pieces]
    held = overlap if overlap > 1 and blend else 0  # one frame of overlap blends with weight 0: not held
    first_window = len(pieces) if len(pieces) <= 4 else 4 - held
    assert windows == sorted(windows) and windows.count(0) == first_window
    for piece in pieces:
        assert windows.count(piece.window) == piece.window_pieces > piece.window_piece >= 0


def test_windows_order_is_selectable_and_checked(pipe, image) -> None:
    waveform = _speechlike(18 * SPF)
    steps = pipe(image, waveform, output_type="latent", progress=False, **SETTINGS).latents
    windows = pipe(
        image, waveform, output_type="latent", sampling_order="windows", progress=False, **SETTINGS
    )
    assert steps.shape == windows.latents.shape and not torch.allclose(steps, windows.latents)
    with pytest.raises(UserFacingError, match="sampling order"):
        pipe(image, waveform, output_type="latent", sampling_order="sideways", **SETTINGS)
    with pytest.raises(UserFacingError, match="prefix"):
        next(pipe.stream(image, [waveform], prefix="guess", **SETTINGS))
    with pytest.raises(UserFacingError, match="shorter than one video frame"):
        list(pipe.stream(image, [waveform[:100]], **SETTINGS))


def test_the_first_frame_goes_out_after_one_latent_frame_is_decoded(pipe, image, monkeypatch) -> None:
    """Pieces are handed out as the causal decoder makes them: the first before the window's other latent
    frames are decoded, so the first frame waits for one latent frame's decode, not the window's."""
    decoded = []
    original = StreamingDecoder.decode

    def counting(self, latents):
        decoded.append(latents.shape[2])
        return original(self, latents)

    monkeypatch.setattr(StreamingDecoder, "decode", counting)
    pieces = pipe.stream(image, _chunks(_speechlike(29 * SPF)), **SETTINGS)
    first = next(pieces)
    assert decoded == [1] and len(first.frames) == 1 and first.window == 0 and first.window_piece == 0
    second = next(pieces)
    assert decoded == [1, 1] and len(second.frames) == 4 and second.first_frame == 1
    pieces.close()
