"""Writes the face pipeline's fixtures (tests/fixtures/face/) with dlib itself (PyPI dlib-bin) as
the reference:

  resnet_tiny.dat          the face ResNet's exact layout (29 convolutions, 14 residual units) with
                           few filters (4, 6, 8, 10 per level, 8 outputs) and random weights
  mmod_tiny.dat            the MMOD detector's layout (7 convolutions, 6 batch norms) with few
                           filters, random weights and a 40x40 detector window
  sp_tiny.dat              a 5-point shape predictor: 3 cascades of 20 depth-3 trees over 40
                           feature pixels, random splits and leaves
  resnet_min.dat, mmod_min.dat, sp_min.dat: the same layouts with one filter per layer, one tree
                           of depth 1: small enough to cut at every byte
  chips/*.png              150x150 RGB chips: crops of scikit-image's public-domain photos
  photos/*.png             small face photos: scikit-image's astronaut (Eileen Collins, NASA, public
                           domain), cropped and scaled, and a mirrored copy
  face_golden.safetensors
      tiny_desc_K          dlib's descriptors of chip K with resnet_tiny.dat
      tiny_det_K           dlib's detections with mmod_tiny.dat on photo K (rows: left, top, right,
                           bottom, score; adjust threshold -0.5 so random weights give some)
      tinypipe_desc_K      the three tiny networks end to end on photo K (best detection, its points,
                           compute_face_descriptor(img, shape))
      tiny_shape_K         dlib's 5 points with sp_tiny.dat on photo K in the box of tiny_box_K
      photos/big_synthetic.png, dlib_chips/big_K.png, big_parts_K: chips of a 640x700 synthetic image
                           for landmarks 250-400 px apart (dlib's 2x pyramid path)
  dlib_chips/tiny_K.png  dlib.get_face_chip of photo K for the shape of tiny_shape_K (150x150)
      and, when the real models are installed (scripts/install-face-models.sh):
      real_det_K, real_shape_K, dlib_chips/real_K.png, real_desc_K: the full pipeline of dlib's Python API
      (cnn_face_detection_model_v1(img, 0), shape_predictor(img, box),
      get_face_chip(img, shape, 150, 0.25), compute_face_descriptor(img, shape)) on photo K,
      and real_chipdesc_K: the descriptor of chip K (aligned input)

  build-venv/bin/python tests/reference/make_face_fixtures.py [FACE_MODELS_DIR]
"""

import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dlib_dat as D  # noqa: E402
import st_io  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "face")


def random_records(layout, rng, in_channels=3, input_rec=None, bn=False):
    """Records from the input upward with random parameters, following layout (outermost first)."""
    records = [input_rec]
    channels = in_channels
    tag_ch = {}
    for entry in reversed(layout[1:-1]):
        kind = entry[0]
        if kind == "con":
            n, k, s = entry[1], entry[2], entry[3]
            pad = 0 if s != 1 else k // 2
            w = rng.standard_normal((n, channels, k, k)).astype(np.float32) / np.sqrt(channels * k * k)
            b = (0.1 * rng.standard_normal(n)).astype(np.float32)
            records.append({"kind": "con", "params": np.concatenate([w.reshape(-1), b]), "num_filters": n, "nr": k,
                            "nc": k, "stride": (s, s), "pad": (pad, pad), "filters": [n, channels, k, k],
                            "biases": [1, n, 1, 1]})
            channels = n
        elif kind == "affine":
            g = (1.0 + 0.2 * rng.standard_normal(channels)).astype(np.float32)
            b = (0.1 * rng.standard_normal(channels)).astype(np.float32)
            rec = {"kind": "affine", "params": np.concatenate([g, b]), "gamma": [1, channels, 1, 1],
                   "beta": [1, channels, 1, 1]}
            if bn:
                shape = (1, channels, 1, 1)
                rec["means"] = np.zeros(shape, np.float32)
                rec["invstds"] = np.ones(shape, np.float32)
                rec["running_means"] = (0.2 * rng.standard_normal(shape)).astype(np.float32)
                rec["running_variances"] = (0.5 + rng.random(shape)).astype(np.float32)
                rec["eps"] = 1e-4
            records.append(rec)
        elif kind == "relu":
            records.append({"kind": "relu"})
        elif kind in ("max_pool", "avg_pool"):
            k, s = entry[1], entry[2]
            pad = 0 if s != 1 else k // 2
            records.append({"kind": kind, "nr": k, "nc": k, "stride": (s, s), "pad": (pad, pad)})
        elif kind == "tag":
            tag_ch[entry[1]] = channels
            records.append({"kind": "tag", "id": entry[1]})
        elif kind == "skip":
            channels = tag_ch[entry[1]]
            records.append({"kind": "skip", "id": entry[1]})
        elif kind == "add_prev":
            channels = max(channels, tag_ch[entry[1]])
            records.append({"kind": "add_prev"})
        elif kind == "fc":
            n = entry[1]
            w = rng.standard_normal((channels, n)).astype(np.float32) / np.sqrt(channels)
            records.append({"kind": "fc", "num_outputs": n, "num_inputs": channels, "params": w.reshape(-1),
                            "weights": [channels, n, 1, 1], "biases": [0, 0, 0, 0], "bias_mode": 1})
            channels = n
    # tags and skips are not written as records of their own
    return records


def write_net(layout, records, loss, path):
    # write_network wants every record, tags and skips included, from the input upward
    data = D.write_network(layout, records, loss)
    D.read_network(data, layout)  # the strict reader must accept what we wrote
    with open(path, "wb") as f:
        f.write(data)
    return data


def tiny_resnet(rng, widths=(4, 6, 8, 10), fc=8, name="resnet_tiny.dat"):
    layout = D.resnet_layout(widths=widths, fc=fc)
    inp = {"kind": "input", "tag": "input_rgb_image_sized", "avg": [122.782, 117.001, 104.298], "nr": 150, "nc": 150}
    records = random_records(layout, rng, input_rec=inp)
    return write_net(layout, records, {"margin": 0.04, "dist_thresh": 0.6}, os.path.join(OUT, name))


def tiny_mmod(rng, widths=(4, 6, 6, 5), name="mmod_tiny.dat"):
    layout = D.mmod_layout(widths=widths)
    inp = {"kind": "input", "tag": "input_rgb_image_pyramid2", "avg": [122.782, 117.001, 104.298]}
    records = random_records(layout, rng, input_rec=inp, bn=True)
    loss = {"version": 4, "windows": [(40, 40, "")], "loss_per_false_alarm": 1.0, "loss_per_missed_target": 1.0,
            "truth_match_iou_threshold": 0.5, "nms": (0.3382761351109955, 1.0), "ignore": (0.5, 1.0)}
    return write_net(layout, records, loss, os.path.join(OUT, name))


def tiny_shape_predictor(rng, real_initial=None, cascades=3, ntrees=20, pixels=40, depth=3, name="sp_tiny.dat"):
    parts = 5
    initial = real_initial if real_initial is not None else rng.random((2 * parts, 1)).astype(np.float32)
    forests, anchors, deltas = [], [], []
    for _ in range(cascades):
        trees = []
        for _ in range(ntrees):
            splits = [(int(rng.integers(pixels)), int(rng.integers(pixels)), float(rng.normal(0, 20)))
                      for _ in range(2 ** depth - 1)]
            leaves = [(0.02 * rng.standard_normal((2 * parts, 1))).astype(np.float32) for _ in range(2 ** depth)]
            trees.append((splits, leaves))
        forests.append(trees)
        anchors.append([int(rng.integers(parts)) for _ in range(pixels)])
        deltas.append([(float(rng.normal(0, 0.1)), float(rng.normal(0, 0.1))) for _ in range(pixels)])
    sp = {"initial": initial, "forests": forests, "anchors": anchors, "deltas": deltas}
    data = D.write_shape_predictor(sp)
    D.read_shape_predictor(data)
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def images():
    from skimage import data
    os.makedirs(os.path.join(OUT, "chips"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "photos"), exist_ok=True)
    astro = data.astronaut()            # 512x512, the face around (180-300, 60-200)
    chips = [astro[40:190, 170:320], data.chelsea()[60:210, 120:270], astro[0:300, 100:400][::2, ::2]]
    for k, c in enumerate(chips):
        Image.fromarray(np.ascontiguousarray(c)).save(os.path.join(OUT, "chips", f"chip_{k}.png"))
    photo = Image.fromarray(astro[0:320, 80:400])                     # 320x320, face ~120 px
    photos = [photo.resize((240, 240), Image.BILINEAR), photo.transpose(Image.FLIP_LEFT_RIGHT).resize((270, 270),
                                                                                                   Image.BILINEAR),
              photo.rotate(12, Image.BILINEAR)]
    for k, p in enumerate(photos):
        p.save(os.path.join(OUT, "photos", f"photo_{k}.png"))


def fuzz_corpus():
    """tests/fuzz/corpus/dlib_dat: a selector byte (0 ResNet, 1 MMOD, 2 shape predictor) + a file."""
    folder = os.path.join(HERE, "..", "fuzz", "corpus", "dlib_dat")
    os.makedirs(folder, exist_ok=True)
    files = {0: open(os.path.join(OUT, "resnet_min.dat"), "rb").read(),
             1: open(os.path.join(OUT, "mmod_min.dat"), "rb").read(),
             2: open(os.path.join(OUT, "sp_min.dat"), "rb").read()}
    names = {0: "resnet", 1: "mmod", 2: "sp"}

    def put(name, sel, data):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(bytes([sel]) + data)

    for sel, data in files.items():
        base = names[sel]
        put(f"{base}_valid", sel, data)
        put(f"{base}_cut_half", sel, data[:len(data) // 2])
        put(f"{base}_empty", sel, b"")
        # the first count-like control byte after the start made 8 bytes of 0xff (a huge count)
        huge = bytearray(data)
        i = 20
        huge[i] = 0x08
        huge[i + 1:i + 1] = b"\xff" * 8
        put(f"{base}_huge_count", sel, bytes(huge))
        neg = bytearray(data)
        neg[20] |= 0x80
        put(f"{base}_negative", sel, bytes(neg))
        text = bytearray(data)
        text[len(text) // 3] = ord("7")
        put(f"{base}_text_float", sel, bytes(text))
        put(f"{base}_trailing", sel, data + b"\x01\x00")
    put("resnet_as_mmod", 1, files[0])
    put("mmod_as_sp", 2, files[1])
    put("sp_as_resnet", 0, files[2])
    # a convolution of another kernel size: 7x7 stored as 5x5 in the ResNet's stem
    bad = files[0].replace(b"\x01\x07\x01\x07", b"\x01\x05\x01\x05", 1)
    put("resnet_wrong_kernel", 0, bad)
    bad = files[0].replace(b"con_4", b"con_9", 1)
    put("resnet_wrong_tag", 0, bad)


def load_png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def main():
    import dlib
    models = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/flashlora/face-models")
    os.makedirs(os.path.join(OUT, "dlib_chips"), exist_ok=True)
    rng = np.random.default_rng(7)
    images()
    tiny_resnet(rng)
    tiny_mmod(rng)
    real_sp = os.path.join(models, "shape_predictor_5_face_landmarks.dat")
    initial = D.read_shape_predictor(open(real_sp, "rb").read())["initial"] if os.path.exists(real_sp) else None
    tiny_shape_predictor(rng, initial)
    # the smallest files of each layout, for the test that cuts a file at every byte
    tiny_resnet(rng, widths=(1, 1, 1, 1), fc=2, name="resnet_min.dat")
    tiny_mmod(rng, widths=(1, 1, 1, 1), name="mmod_min.dat")
    tiny_shape_predictor(rng, None, cascades=2, ntrees=2, pixels=4, depth=1, name="sp_min.dat")
    fuzz_corpus()
    out = {}
    chips = sorted(os.listdir(os.path.join(OUT, "chips")))
    photos = sorted(n for n in os.listdir(os.path.join(OUT, "photos")) if n.startswith("photo_"))
    net = dlib.face_recognition_model_v1(os.path.join(OUT, "resnet_tiny.dat"))
    for k, name in enumerate(chips):
        img = load_png(os.path.join(OUT, "chips", name))
        out[f"tiny_desc_{k}"] = torch.tensor(np.array(net.compute_face_descriptor(img)), dtype=torch.float32)
    det = dlib.cnn_face_detection_model_v1(os.path.join(OUT, "mmod_tiny.dat"))
    sp = dlib.shape_predictor(os.path.join(OUT, "sp_tiny.dat"))
    for k, name in enumerate(photos):
        img = load_png(os.path.join(OUT, "photos", name))
        # the tiny detector's random weights: any positive score is a detection
        dets = det(img, 0)
        rows = [[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence] for d in dets]
        out[f"tiny_det_{k}"] = torch.tensor(rows if rows else np.zeros((0, 5)), dtype=torch.float32).reshape(-1, 5)
        h, w = img.shape[:2]
        box = dlib.rectangle(w // 5, h // 6, w - w // 4, h - h // 5)
        shape = sp(img, box)
        out[f"tiny_box_{k}"] = torch.tensor([box.left(), box.top(), box.right(), box.bottom()], dtype=torch.float32)
        out[f"tiny_shape_{k}"] = torch.tensor([[p.x, p.y] for p in shape.parts()], dtype=torch.float32)
        chip = dlib.get_face_chip(img, shape, 150, 0.25)
        Image.fromarray(np.asarray(chip)).save(os.path.join(OUT, "dlib_chips", f"tiny_{k}.png"))
        # the whole pipeline with the three tiny networks: best detection, its points, descriptor
        best = max(dets, key=lambda d: d.confidence)
        pshape = sp(img, best.rect)
        out[f"tinypipe_desc_{k}"] = torch.tensor(np.array(net.compute_face_descriptor(img, pshape)),
                                                 dtype=torch.float32)
    # a face much larger than the chip: extract_image_chip goes through its 2x pyramid
    yy, xx = np.mgrid[0:700, 0:640]
    big = np.stack([(xx * 0.37 + yy * 0.11) % 256, (yy * 0.29) % 256, (xx * 0.05 + 40 * ((xx // 80 + yy // 90) % 2))],
                   axis=-1).astype(np.uint8)
    for cx, cy, r, col in ((200, 300, 60, (250, 240, 40)), (450, 310, 70, (20, 90, 200)), (330, 520, 90, (200, 30, 60))):
        big[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = col
    Image.fromarray(big).save(os.path.join(OUT, "photos", "big_synthetic.png"))
    for k, pts in enumerate(([(520, 300), (420, 305), (170, 310), (270, 312), (350, 490)],
                             [(560, 250), (450, 280), (180, 340), (290, 330), (400, 520)])):
        det = dlib.full_object_detection(dlib.rectangle(100, 150, 600, 650), [dlib.point(x, y) for x, y in pts])
        chip = dlib.get_face_chip(big, det, 150, 0.25)
        Image.fromarray(np.asarray(chip)).save(os.path.join(OUT, "dlib_chips", f"big_{k}.png"))
        out[f"big_parts_{k}"] = torch.tensor(pts, dtype=torch.float32)
    if os.path.exists(os.path.join(models, "mmod_human_face_detector.dat")):
        rdet = dlib.cnn_face_detection_model_v1(os.path.join(models, "mmod_human_face_detector.dat"))
        rsp = dlib.shape_predictor(real_sp)
        rnet = dlib.face_recognition_model_v1(os.path.join(models, "dlib_face_recognition_resnet_model_v1.dat"))
        for k, name in enumerate(photos):
            img = load_png(os.path.join(OUT, "photos", name))
            dets = rdet(img, 0)
            rows = [[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence] for d in dets]
            out[f"real_det_{k}"] = torch.tensor(rows if rows else np.zeros((0, 5)), dtype=torch.float32).reshape(-1, 5)
            if not rows:
                continue
            best = max(dets, key=lambda d: d.confidence)
            shape = rsp(img, best.rect)
            out[f"real_shape_{k}"] = torch.tensor([[p.x, p.y] for p in shape.parts()], dtype=torch.float32)
            chip = dlib.get_face_chip(img, shape, 150, 0.25)
            Image.fromarray(np.asarray(chip)).save(os.path.join(OUT, "dlib_chips", f"real_{k}.png"))
            out[f"real_desc_{k}"] = torch.tensor(np.array(rnet.compute_face_descriptor(img, shape)),
                                                 dtype=torch.float32)
        for k, name in enumerate(chips):
            img = load_png(os.path.join(OUT, "chips", name))
            out[f"real_chipdesc_{k}"] = torch.tensor(np.array(rnet.compute_face_descriptor(img)), dtype=torch.float32)
    st_io.save(os.path.join(OUT, "face_golden.safetensors"), out, {"about": "face pipeline goldens from dlib"})
    for k, v in out.items():
        print(k, list(v.shape), v.reshape(-1)[:6].tolist())


if __name__ == "__main__":
    main()
