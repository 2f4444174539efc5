"""Reads and writes dlib's serialization format (the .dat files of the dlib face models), for the
fixture generators: a strict reader of the primitives and of the network records of the two
network types flashlora runs (the ResNet face descriptor and the MMOD face detector) and of the
shape predictor, and the matching writer for tiny random files in the same layouts.

Format facts (dlib serialize.h, float_details.h, dnn/core.h, dnn/layers.h, dnn/input.h,
dnn/loss.h, image_processing/shape_predictor.h):
  integer   control byte (0x80 negative, low 4 bits = byte count n >= 1, 0x70 ignored), then n
            little-endian magnitude bytes
  float     mantissa (int64) then exponent (int16), each an integer; value = m * 2^e
  bool      '1' or '0';  uint8 one raw byte;  string: length, bytes;  vector: length, items
  tensor    int 2, n, k, nr, nc, then n*k*nr*nc raw little-endian float32
  alias     int 1, n, k, nr, nc
Network records start with the outermost layer: add_loss_layer (int 1, loss, subnet); add_layer
(int 1|2, subnet, details, 3 bools, x_grad, cached_output, params_grad if 2); the add_layer on
the input (int 2|3, input, details, 3 bools, 3 tensors, sample expansion factor if 3); tag and
skip (int 1, subnet).
"""

import struct

import numpy as np


class DatError(Exception):
    pass


class Reader:
    def __init__(self, data):
        self.d = data
        self.p = 0

    def need(self, n):
        if self.p + n > len(self.d):
            raise DatError(f"truncated at byte {self.p}")

    def byte(self):
        self.need(1)
        b = self.d[self.p]
        self.p += 1
        return b

    def int_(self, signed=True, nbytes=8):
        c = self.byte() & 0x8F
        n = c & 0x0F
        neg = bool(c & 0x80)
        if n == 0 or n > nbytes or (neg and not signed):
            raise DatError(f"bad integer control byte 0x{c:02x} at {self.p - 1}")
        self.need(n)
        v = int.from_bytes(self.d[self.p:self.p + n], "little")
        self.p += n
        return -v if neg else v

    def float_(self):
        self.need(1)
        if self.d[self.p] & 0x70:
            raise DatError("text float format")
        m = self.int_(True, 8)
        e = self.int_(True, 2)
        if e >= 32000:
            return {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}[e]
        return float(np.ldexp(np.float64(m), e))

    def bool_(self):
        b = self.byte()
        if b not in (0x30, 0x31):
            raise DatError("bad bool")
        return b == 0x31

    def string(self):
        n = self.int_(False)
        self.need(n)
        s = self.d[self.p:self.p + n].decode("latin-1")
        self.p += n
        return s

    def tensor(self):
        if self.int_() != 2:
            raise DatError("tensor version")
        shape = [self.int_() for _ in range(4)]
        n = int(np.prod(shape))
        self.need(4 * n)
        a = np.frombuffer(self.d, dtype="<f4", count=n, offset=self.p).copy()
        self.p += 4 * n
        return a.reshape(shape)

    def alias(self):
        if self.int_() != 1:
            raise DatError("alias version")
        return [self.int_() for _ in range(4)]


class Writer:
    def __init__(self):
        self.b = bytearray()

    def int_(self, v):
        neg = v < 0
        m = -v if neg else v
        raw = m.to_bytes(max(1, (m.bit_length() + 7) // 8), "little")
        self.b.append(len(raw) | (0x80 if neg else 0))
        self.b += raw

    def float_(self, v):
        v = float(v)
        if v == 0.0:
            self.int_(0)
            self.int_(0)
            return
        m, e = np.frexp(np.float64(v))  # v = m * 2^e, 0.5 <= |m| < 1
        mant = int(np.ldexp(m, 53))
        exp = int(e) - 53
        while mant % 2 == 0:
            mant //= 2
            exp += 1
        self.int_(mant)
        self.int_(exp)

    def bool_(self, v):
        self.b.append(0x31 if v else 0x30)

    def string(self, s):
        raw = s.encode("latin-1")
        self.int_(len(raw))
        self.b += raw

    def tensor(self, a):
        a = np.asarray(a, dtype="<f4")
        shape = list(a.shape) + [1] * (4 - a.ndim)
        self.int_(2)
        for s in shape:
            self.int_(s)
        self.b += a.tobytes()

    def alias(self, shape):
        self.int_(1)
        for s in shape:
            self.int_(s)


# ---- network layouts ------------------------------------------------------------------------
# A network is a list from the outermost layer inward: ("loss", kind), ("tag", id), ("skip", id),
# ("con", filters, k, stride), ("affine",), ("relu",), ("max_pool", k, stride),
# ("avg_pool", k, stride) (k = 0: global), ("add_prev", id), ("fc", outputs), ("input", kind).

def resnet_layout(widths=(32, 64, 128, 256), fc=128):
    w32, w64, w128, w256 = widths
    layout = [("loss", "metric"), ("fc", fc), ("avg_pool", 0, 1)]

    def ares(n):
        return [("relu",), ("add_prev", 1), ("affine",), ("con", n, 3, 1), ("relu",), ("affine",), ("con", n, 3, 1),
                ("tag", 1)]

    def ares_down(n):
        return [("relu",), ("add_prev", 2), ("avg_pool", 2, 2), ("skip", 1), ("tag", 2), ("affine",), ("con", n, 3, 1),
                ("relu",), ("affine",), ("con", n, 3, 2), ("tag", 1)]

    layout += ares_down(w256)
    layout += ares(w256) + ares(w256) + ares_down(w256)
    layout += ares(w128) + ares(w128) + ares_down(w128)
    layout += ares(w64) + ares(w64) + ares(w64) + ares_down(w64)
    layout += ares(w32) + ares(w32) + ares(w32)
    layout += [("max_pool", 3, 2), ("relu",), ("affine",), ("con", w32, 7, 2), ("input", "rgb_sized")]
    return layout


def mmod_layout(widths=(16, 32, 32, 45)):
    a, b, c, d = widths
    layout = [("loss", "mmod"), ("con", 1, 9, 1)]
    for _ in range(3):
        layout += [("relu",), ("affine",), ("con", d, 5, 1)]
    layout += [("relu",), ("affine",), ("con", c, 5, 2), ("relu",), ("affine",), ("con", b, 5, 2),
               ("relu",), ("affine",), ("con", a, 5, 2), ("input", "rgb_pyramid")]
    return layout


def read_network(data, layout):
    """Parses a whole file; returns (records from the input upward, loss details)."""
    r = Reader(data)
    records = []
    loss = {}

    def details(entry):
        kind = entry[0]
        tag = r.string()
        rec = {"kind": kind, "tag": tag}
        if kind == "con":
            if tag not in ("con_4", "con_5", "con_6"):
                raise DatError(f"unexpected {tag} for con")
            rec["params"] = r.tensor()
            rec["num_filters"] = r.int_()
            rec["nr"], rec["nc"] = r.int_(), r.int_()
            rec["stride"] = (r.int_(), r.int_())
            rec["pad"] = (r.int_(), r.int_())
            rec["filters"] = r.alias()
            rec["biases"] = r.alias()
            rec["mult"] = [r.float_() for _ in range(4)]
            if tag in ("con_5", "con_6"):
                rec["use_bias"] = r.bool_()
            if tag == "con_6":
                rec["use_relu"] = r.bool_()
        elif kind == "affine":
            if tag == "bn_con2":
                rec["params"] = r.tensor()
                rec["gamma"], rec["beta"] = r.alias(), r.alias()
                rec["means"], rec["invstds"] = r.tensor(), r.tensor()
                rec["running_means"], rec["running_variances"] = r.tensor(), r.tensor()
                rec["num_updates"], rec["window"] = r.int_(), r.int_()
                rec["mult"] = [r.float_() for _ in range(4)]
                rec["eps"] = r.float_()
            elif tag in ("affine_", "affine_2"):
                rec["params"] = r.tensor()
                rec["gamma"], rec["beta"] = r.alias(), r.alias()
                rec["mode"] = r.int_()
                if tag == "affine_2":
                    rec["disabled"] = r.bool_()
            else:
                raise DatError(f"unexpected {tag} for affine")
        elif kind == "relu":
            if tag == "relu_2":
                rec["disabled"] = r.bool_()
            elif tag != "relu_":
                raise DatError(tag)
        elif kind in ("max_pool", "avg_pool"):
            if tag != kind + "_2":
                raise DatError(tag)
            rec["nr"], rec["nc"] = r.int_(), r.int_()
            rec["stride"] = (r.int_(), r.int_())
            rec["pad"] = (r.int_(), r.int_())
        elif kind == "add_prev":
            if tag != "add_prev_":
                raise DatError(tag)
        elif kind == "fc":
            if tag not in ("fc_2", "fc_3"):
                raise DatError(tag)
            rec["num_outputs"], rec["num_inputs"] = r.int_(), r.int_()
            rec["params"] = r.tensor()
            rec["weights"], rec["biases"] = r.alias(), r.alias()
            rec["bias_mode"] = r.int_()
            rec["mult"] = [r.float_() for _ in range(4)]
            if tag == "fc_3":
                rec["use_bias"] = r.bool_()
        return rec

    def input_record(kind):
        tag = r.string()
        rec = {"kind": "input", "tag": tag}
        if kind == "rgb_sized":
            if tag != "input_rgb_image_sized":
                raise DatError(tag)
            rec["avg"] = [r.float_() for _ in range(3)]
            rec["nr"], rec["nc"] = r.int_(), r.int_()
        else:
            if tag not in ("input_rgb_image_pyramid", "input_rgb_image_pyramid2"):
                raise DatError(tag)
            rec["avg"] = [r.float_() for _ in range(3)]
            if tag == "input_rgb_image_pyramid2":
                rec["padding"], rec["outer_padding"] = r.int_(), r.int_()
        return rec

    def layer(i):
        entry = layout[i]
        kind = entry[0]
        if kind in ("tag", "skip"):
            if r.int_() != 1:
                raise DatError(f"{kind} version")
            layer(i + 1)
            records.append({"kind": kind, "id": entry[1]})
            return
        if layout[i + 1][0] == "input":
            v = r.int_()
            if v not in (2, 3):
                raise DatError("input add_layer version")
            records.append(input_record(layout[i + 1][1]))
            rec = details(entry)
            for _ in range(3):
                r.bool_()
            for _ in range(3):
                r.tensor()
            if v == 3:
                r.int_()
            records.append(rec)
            return
        v = r.int_()
        if v not in (1, 2):
            raise DatError("add_layer version")
        layer(i + 1)
        rec = details(entry)
        for _ in range(3):
            r.bool_()
        r.tensor()
        r.tensor()
        if v == 2:
            r.tensor()
        records.append(rec)

    if r.int_() != 1:
        raise DatError("loss layer version")
    kind = layout[0][1]
    tag = r.string()
    loss["tag"] = tag
    if kind == "metric":
        if tag == "loss_metric_2":
            loss["margin"], loss["dist_thresh"] = r.float_(), r.float_()
    else:
        if tag != "loss_mmod_":
            raise DatError(tag)
        v = r.int_()
        loss["version"] = v
        if v == 1:
            loss["windows"] = [(r.int_(), r.int_(), "")]
        else:
            wins = []
            for _ in range(r.int_()):
                wv = r.int_()
                w, h = r.int_(), r.int_()
                label = r.string() if wv == 2 else ""
                wins.append((w, h, label))
            loss["windows"] = wins
        loss["loss_per_false_alarm"] = r.float_()
        loss["loss_per_missed_target"] = r.float_()
        loss["truth_match_iou_threshold"] = r.float_()
        loss["nms"] = (r.float_(), r.float_())
        loss["ignore"] = (r.float_(), r.float_())
        if v >= 3:
            loss["assume_image_pyramid"] = r.byte()
        if v >= 4:
            loss["bbr"] = r.bool_()
            loss["bbr_lambda"] = r.float_()
    layer(1)
    if r.p != len(data):
        raise DatError(f"{len(data) - r.p} bytes after the network")
    return records, loss


def write_network(layout, records, loss):
    """The inverse of read_network for the records it returns (new-style tags, version 2/3)."""
    w = Writer()
    by_layer = list(records)  # from the input upward
    # records pop from the top: the outermost layer is the last record
    w.int_(1)
    if layout[0][1] == "metric":
        w.string("loss_metric_2")
        w.float_(loss["margin"])
        w.float_(loss["dist_thresh"])
    else:
        w.string("loss_mmod_")
        w.int_(loss.get("version", 4))
        w.int_(len(loss["windows"]))
        for width, height, label in loss["windows"]:
            w.int_(2)
            w.int_(width)
            w.int_(height)
            w.string(label)
        w.float_(loss["loss_per_false_alarm"])
        w.float_(loss["loss_per_missed_target"])
        w.float_(loss["truth_match_iou_threshold"])
        w.float_(loss["nms"][0])
        w.float_(loss["nms"][1])
        w.float_(loss["ignore"][0])
        w.float_(loss["ignore"][1])
        w.b.append(loss.get("assume_image_pyramid", 1))
        w.bool_(loss.get("bbr", False))
        w.float_(loss.get("bbr_lambda", 100.0))

    empty = np.zeros((0,), dtype=np.float32)

    def details(rec):
        kind = rec["kind"]
        if kind == "con":
            w.string("con_4")
            w.tensor(rec["params"].reshape(-1, 1, 1, 1))
            w.int_(rec["num_filters"])
            w.int_(rec["nr"])
            w.int_(rec["nc"])
            w.int_(rec["stride"][0])
            w.int_(rec["stride"][1])
            w.int_(rec["pad"][0])
            w.int_(rec["pad"][1])
            w.alias(rec["filters"])
            w.alias(rec["biases"])
            for m in (1.0, 1.0, 1.0, 0.0):
                w.float_(m)
        elif kind == "affine" and "running_means" in rec:
            w.string("bn_con2")
            w.tensor(rec["params"].reshape(-1, 1, 1, 1))
            w.alias(rec["gamma"])
            w.alias(rec["beta"])
            for t in ("means", "invstds", "running_means", "running_variances"):
                w.tensor(rec[t])
            w.int_(rec.get("num_updates", 100))
            w.int_(rec.get("window", 100))
            for m in (1.0, 1.0, 1.0, 0.0):
                w.float_(m)
            w.float_(rec["eps"])
        elif kind == "affine":
            w.string("affine_")
            w.tensor(rec["params"].reshape(-1, 1, 1, 1))
            w.alias(rec["gamma"])
            w.alias(rec["beta"])
            w.int_(rec.get("mode", 0))
        elif kind == "relu":
            w.string("relu_")
        elif kind in ("max_pool", "avg_pool"):
            w.string(kind + "_2")
            w.int_(rec["nr"])
            w.int_(rec["nc"])
            w.int_(rec["stride"][0])
            w.int_(rec["stride"][1])
            w.int_(rec["pad"][0])
            w.int_(rec["pad"][1])
        elif kind == "add_prev":
            w.string("add_prev_")
        elif kind == "fc":
            w.string("fc_2")
            w.int_(rec["num_outputs"])
            w.int_(rec["num_inputs"])
            w.tensor(rec["params"].reshape(-1, 1, 1, 1))
            w.alias(rec["weights"])
            w.alias(rec["biases"])
            w.int_(rec["bias_mode"])
            for m in (1.0, 1.0, 1.0, 0.0):
                w.float_(m)

    def input_record(rec):
        if rec["tag"] == "input_rgb_image_sized":
            w.string("input_rgb_image_sized")
            for a in rec["avg"]:
                w.float_(a)
            w.int_(rec["nr"])
            w.int_(rec["nc"])
        else:
            w.string("input_rgb_image_pyramid2")
            for a in rec["avg"]:
                w.float_(a)
            w.int_(rec.get("padding", 10))
            w.int_(rec.get("outer_padding", 11))

    def layer(i, top):
        """Writes layout[i], whose record is by_layer[top]; returns the index below it."""
        entry = layout[i]
        if entry[0] in ("tag", "skip"):
            w.int_(1)
            layer(i + 1, top - 1)
            return
        if layout[i + 1][0] == "input":
            w.int_(3)
            input_record(by_layer[top - 1])
            details(by_layer[top])
            # this_layer_setup_called = true: else dlib re-initializes the layer on first use
            for flag in (True, False, False):
                w.bool_(flag)
            for _ in range(3):
                w.tensor(empty)
            w.int_(1)
            return
        w.int_(2)
        layer(i + 1, top - 1)
        details(by_layer[top])
        for flag in (True, False, False):
            w.bool_(flag)
        for _ in range(3):
            w.tensor(empty)

    layer(1, len(by_layer) - 1)
    return bytes(w.b)


# ---- shape predictor ------------------------------------------------------------------------

def read_shape_predictor(data):
    r = Reader(data)
    if r.int_() != 1:
        raise DatError("shape predictor version")

    def matrix():
        rows, cols = -r.int_(), -r.int_()
        return np.array([r.float_() for _ in range(rows * cols)], dtype=np.float32).reshape(rows, cols)

    initial = matrix()
    forests = []
    for _ in range(r.int_()):
        trees = []
        for _ in range(r.int_()):
            splits = [(r.int_(), r.int_(), r.float_()) for _ in range(r.int_())]
            leaves = [matrix() for _ in range(r.int_())]
            trees.append((splits, leaves))
        forests.append(trees)
    anchors = [[r.int_() for _ in range(r.int_())] for _ in range(r.int_())]
    deltas = [[(r.float_(), r.float_()) for _ in range(r.int_())] for _ in range(r.int_())]
    if r.p != len(data):
        raise DatError(f"{len(data) - r.p} bytes after the shape predictor")
    return {"initial": initial, "forests": forests, "anchors": anchors, "deltas": deltas}


def write_shape_predictor(sp):
    w = Writer()
    w.int_(1)

    def matrix(m):
        m = np.asarray(m, dtype=np.float32)
        w.int_(-m.shape[0])
        w.int_(-m.shape[1])
        for v in m.reshape(-1):
            w.float_(float(v))

    matrix(sp["initial"])
    w.int_(len(sp["forests"]))
    for trees in sp["forests"]:
        w.int_(len(trees))
        for splits, leaves in trees:
            w.int_(len(splits))
            for a, b, t in splits:
                w.int_(a)
                w.int_(b)
                w.float_(float(np.float32(t)))
            w.int_(len(leaves))
            for leaf in leaves:
                matrix(leaf)
    w.int_(len(sp["anchors"]))
    for a in sp["anchors"]:
        w.int_(len(a))
        for x in a:
            w.int_(x)
    w.int_(len(sp["deltas"]))
    for d in sp["deltas"]:
        w.int_(len(d))
        for x, y in d:
            w.float_(float(np.float32(x)))
            w.float_(float(np.float32(y)))
    return bytes(w.b)
