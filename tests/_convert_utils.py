"""A NumPy interpreter of Caffe layer lists (NCHW, float64), the independent reference for the
caffemodel conversion tests. It follows Caffe's own code paths: symmetric pad + floor-mode
convolution, ceil-mode max pooling with windows clipped to the input, BatchNorm statistics divided
by the stored factor, in-place Scale, Eltwise SUM, Dropout as identity at test time."""

import math

import numpy as np

CAFFE_BGR_MEAN = np.array([104.008, 116.669, 122.675])


def conv_nchw(x, w, b, stride, pad, dilation):
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    assert ci == c
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ho = (h + 2 * pad[0] - ((kh - 1) * dilation[0] + 1)) // stride[0] + 1
    wo = (wd + 2 * pad[1] - ((kw - 1) * dilation[1] + 1)) // stride[1] + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            patch = xp[:, :, r0 : r0 + stride[0] * (ho - 1) + 1 : stride[0],
                       c0 : c0 + stride[1] * (wo - 1) + 1 : stride[1]]  # fmt: skip
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.float64))
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def max_pool_caffe(x, k, s, p):
    n, c, h, w = x.shape

    def size(d):
        out = int(math.ceil((d + 2 * p - k) / s)) + 1
        if p > 0 and (out - 1) * s >= d + p:
            out -= 1
        return out

    ho, wo = size(h), size(w)
    out = np.empty((n, c, ho, wo))
    for i in range(ho):
        hs = i * s - p
        he, hs = min(hs + k, h), max(hs, 0)
        for j in range(wo):
            ws = j * s - p
            we, ws = min(ws + k, w), max(ws, 0)
            out[:, :, i, j] = x[:, :, hs:he, ws:we].max(axis=(2, 3))
    return out


def caffe_forward(layers, rgb, output):
    """Runs a Caffe layer list on an RGB 0..255 image batch (N, H, W, 3); returns blob NCHW."""
    x = rgb.astype(np.float64)[..., ::-1] - CAFFE_BGR_MEAN
    blobs = {"data": x.transpose(0, 3, 1, 2)}
    for layer in layers:
        if layer.name.endswith(("_res075", "_res05")):
            continue
        t = layer.type
        if t == "Data":
            continue
        ins = [blobs[b] for b in layer.bottom]
        if t == "Convolution":
            c = layer.conv
            bias = layer.blobs[1].reshape(-1) if len(layer.blobs) > 1 else None
            y = conv_nchw(ins[0], layer.blobs[0], bias, c.stride, c.pad, c.dilation)
        elif t == "BatchNorm":
            f = float(layer.blobs[2].reshape(-1)[0])
            inv = 0.0 if f == 0 else 1.0 / f
            mean = layer.blobs[0].reshape(1, -1, 1, 1).astype(np.float64) * inv
            var = layer.blobs[1].reshape(1, -1, 1, 1).astype(np.float64) * inv
            y = (ins[0] - mean) / np.sqrt(var + (layer.bn_eps or 1e-5))
        elif t == "Scale":
            y = ins[0] * layer.blobs[0].reshape(1, -1, 1, 1)
            if len(layer.blobs) > 1:
                y = y + layer.blobs[1].reshape(1, -1, 1, 1)
        elif t == "ReLU":
            y = np.maximum(ins[0], 0)
        elif t == "Pooling":
            method, k, s, p = layer.pool
            assert method == "MAX"
            y = max_pool_caffe(ins[0], k[0], s[0], p[0])
        elif t == "Dropout":
            y = ins[0]
        elif t == "Eltwise":
            y = sum(ins)
        else:
            raise NotImplementedError(t)
        blobs[layer.top[0]] = y
    return blobs[output]


def keras_name(caffe_name, tag="voc12"):
    """Independent spelling of the expected Keras name of a Caffe layer."""
    if caffe_name.startswith(("fc8_", "fc1_")):
        return caffe_name.replace(f"_{tag}", "_voc12")
    return caffe_name


def assert_every_tensor(model, layers, tag="voc12"):
    """Every Caffe parameter arrives, transformed, in the right Keras variable."""
    checked = 0
    by_name = {layer.name: layer for layer in layers}
    for layer in layers:
        if layer.name.endswith(("_res075", "_res05")) or not layer.blobs:
            continue
        if layer.type == "Convolution":
            k = model.get_layer(keras_name(layer.name, tag))
            w = layer.blobs[0].reshape(layer.blobs[0].shape[-4:])
            np.testing.assert_array_equal(k.kernel.numpy(), np.transpose(w, (2, 3, 1, 0)))
            if len(layer.blobs) > 1:
                np.testing.assert_array_equal(k.bias.numpy(), layer.blobs[1].reshape(-1))
            else:
                assert not k.use_bias
            checked += 1
        elif layer.type == "BatchNorm":
            k = model.get_layer(layer.name)
            f = layer.blobs[2].reshape(-1)[0]
            np.testing.assert_allclose(k.moving_mean.numpy(), layer.blobs[0].reshape(-1) / f,
                                       rtol=1e-6)  # fmt: skip
            np.testing.assert_allclose(
                k.moving_variance.numpy(), layer.blobs[1].reshape(-1) / f, rtol=1e-6
            )
            scale = by_name["scale" + layer.name[2:]]
            np.testing.assert_array_equal(k.gamma.numpy(), scale.blobs[0].reshape(-1))
            np.testing.assert_array_equal(k.beta.numpy(), scale.blobs[1].reshape(-1))
            assert k.epsilon == 1e-5
            checked += 1
    return checked


def assert_close_to_reference(actual_nhwc, expected_nchw, rtol=2e-4):
    expected = expected_nchw.transpose(0, 2, 3, 1)
    assert actual_nhwc.shape == expected.shape, (actual_nhwc.shape, expected.shape)
    scale = np.abs(expected).max()
    assert scale > 0
    err = np.abs(actual_nhwc.astype(np.float64) - expected).max() / scale
    assert err < rtol, f"max relative error {err:.2e}"
    return err
