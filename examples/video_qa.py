"""Video question answering (the Keras functional-API guide's "video QA" model), in Python.

    kcompile examples/video_qa.py:video_qa -o video_qa.onnx
    python examples/video_qa.py           # compile, run in onnxruntime on a random clip, report

The same model as examples/video_qa.k: a frozen per-frame CNN (a small conv net standing in for
InceptionV3) applied to every frame by TimeDistributed, an LSTM over the frame features, an
LSTM over the question (Embedding with mask_zero: token 0 is padding), both vectors concatenated
and classified into one of 100 answers. The number of frames and of words is free (None).
"""

from __future__ import annotations

import numpy as np

import kcompile as kc
from kcompile import layers


def build_models() -> dict[str, kc.Model]:
    """frame_cnn and video_qa, made in the order examples/video_qa.k makes them."""
    frame = kc.Input(shape=(32, 32, 3))
    x = layers.Conv2D(16, 3, activation="relu")(frame)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    frame_cnn = kc.Model(frame, layers.GlobalAveragePooling2D()(x), name="frame_cnn")

    video = kc.Input(shape=(None, 32, 32, 3), name="video")  # [batch, frames, H, W, 3]
    frame_cnn.trainable = False  # the CNN's weights stay frozen
    frame_features = layers.TimeDistributed(frame_cnn)(video)  # [batch, frames, 32]
    video_vector = layers.LSTM(64)(frame_features)

    question = kc.Input(shape=(None,), dtype="int32", name="question")  # [batch, words]
    embedded_words = layers.Embedding(1000, 64, mask_zero=True)(question)
    question_vector = layers.LSTM(32)(embedded_words)

    x = layers.concatenate([video_vector, question_vector])
    x = layers.Dense(64, activation="relu")(x)
    predictions = layers.Dense(100, activation="softmax", name="predictions")(x)
    video_qa = kc.Model([video, question], predictions, name="video_qa")
    return {"frame_cnn": frame_cnn, "video_qa": video_qa}


kc.set_random_seed(1)
_models = build_models()
frame_cnn, video_qa = _models["frame_cnn"], _models["video_qa"]


def main() -> None:
    compiled = kc.compile(video_qa)
    rng = np.random.default_rng(0)
    clip = rng.random((2, 6, 32, 32, 3), dtype=np.float32)  # 2 clips of 6 frames
    words = rng.integers(1, 1000, (2, 9)).astype(np.int32)
    words[1, :4] = 0  # the second question is shorter: left padding
    answers = compiled(clip, words)
    frozen = sum(w.data.size for w in video_qa.weights if not w.trainable)
    print(f"video_qa: answers {answers.shape}, rows sum to 1: {bool(np.allclose(answers.sum(axis=1), 1, atol=1e-5))}")
    print(f"  params {video_qa.count_params():,}, frozen (frame_cnn) {frozen:,}")
    print(f"  ONNX nodes {compiled.node_count}, initializers {compiled.initializer_count}")


if __name__ == "__main__":
    main()
