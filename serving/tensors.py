"""TensorProto <-> NumPy conversion without going through TensorFlow ops.

Every request and response passes through here, so the common cases (``tensor_content`` and the
typed ``*_val`` fields) are decoded with plain NumPy; ``tf.make_ndarray`` would be correct but
costs more per call than a small model. Malformed protos become INVALID_ARGUMENT, not a crash.
"""
import math

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import invalid_argument

# DataType enum -> (numpy dtype, TensorProto field holding the values when not in tensor_content)
_DTYPES = {
    types_pb2.DT_FLOAT: (np.float32, "float_val"),
    types_pb2.DT_DOUBLE: (np.float64, "double_val"),
    types_pb2.DT_INT32: (np.int32, "int_val"),
    types_pb2.DT_INT16: (np.int16, "int_val"),
    types_pb2.DT_INT8: (np.int8, "int_val"),
    types_pb2.DT_UINT8: (np.uint8, "int_val"),
    types_pb2.DT_UINT16: (np.uint16, "int_val"),
    types_pb2.DT_INT64: (np.int64, "int64_val"),
    types_pb2.DT_UINT32: (np.uint32, "uint32_val"),
    types_pb2.DT_UINT64: (np.uint64, "uint64_val"),
    types_pb2.DT_BOOL: (np.bool_, "bool_val"),
    types_pb2.DT_HALF: (np.float16, "half_val"),
    types_pb2.DT_STRING: (object, "string_val"),
}
_ITEMSIZE = {np_type: np.dtype(np_type).itemsize for np_type, _ in _DTYPES.values()}
_FROM_NUMPY = {np.dtype(np_type): enum for enum, (np_type, _) in _DTYPES.items() if np_type is not object}


def dtype_name(dtype_enum):
    """'DT_FLOAT' etc. for messages."""
    return types_pb2.DataType.Name(dtype_enum) if dtype_enum in types_pb2.DataType.values() else str(dtype_enum)


def numpy_dtype(dtype_enum):
    """The NumPy dtype that holds a tensor of DataType ``dtype_enum`` (object for strings)."""
    try:
        return _DTYPES[dtype_enum][0]
    except KeyError:
        raise invalid_argument(f"unsupported tensor dtype {dtype_name(dtype_enum)}") from None


def dtype_enum_of(array):
    """The DataType enum for a NumPy array (bytes/str/object arrays are DT_STRING)."""
    if array.dtype.kind in "OSU":
        return types_pb2.DT_STRING
    try:
        return _FROM_NUMPY[array.dtype]
    except KeyError:
        raise invalid_argument(f"unsupported array dtype {array.dtype}") from None


def declared_shape(proto):
    """The dimensions a TensorProto declares; INVALID_ARGUMENT for a negative one."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise invalid_argument("tensor shape has a negative dimension")
    return dims


def to_numpy(proto, fill_limit_bytes=None, what="tensor"):
    """Decode a TensorProto; raises INVALID_ARGUMENT when its values do not fill its shape.

    TensorFlow lets one value (or none) stand for a whole shape; such a tensor is the only one
    that decodes to more memory than the request carried, so with ``fill_limit_bytes`` a shape
    that would fill more than that many bytes from fewer values is refused before anything is
    allocated (a 1 KB request declaring ``[5e7]`` must not cost 400 MB).
    """
    dims = declared_shape(proto)
    size = math.prod(dims)  # not np.prod: ~40x slower on a short list, and this runs per input
    np_type, field = _DTYPES.get(proto.dtype, (None, None))
    if np_type is None:
        raise invalid_argument(f"unsupported tensor dtype {dtype_name(proto.dtype)}")
    if fill_limit_bytes is not None and size * _ITEMSIZE[np_type] > fill_limit_bytes and not proto.tensor_content:
        carried = len(getattr(proto, field))
        if carried != size:
            raise invalid_argument(
                f"{what} declares shape {dims} ({size} values) but carries {carried}; filling it would take "
                f"{size * _ITEMSIZE[np_type]} bytes, more than the {fill_limit_bytes}-byte message limit")
    if proto.dtype == types_pb2.DT_STRING:
        values = list(proto.string_val)
        array = np.empty(len(values), dtype=object)
        array[:] = values
    elif proto.tensor_content:
        content = proto.tensor_content
        itemsize = _ITEMSIZE[np_type]
        if len(content) != size * itemsize:
            raise invalid_argument(
                f"tensor_content has {len(content)} bytes, shape {dims} of {dtype_name(proto.dtype)} needs {size * itemsize}")
        return np.frombuffer(content, dtype=np_type).reshape(dims)
    elif proto.dtype == types_pb2.DT_HALF:
        array = np.asarray(proto.half_val, dtype=np.uint16).view(np.float16)
    else:
        array = np.asarray(getattr(proto, field), dtype=np_type)
    if array.size == size:
        return array.reshape(dims)
    if array.size == 1:  # TensorFlow's convention: one value fills the whole shape
        return np.full(dims, array[0], dtype=array.dtype)
    if array.size == 0:
        return np.zeros(dims, dtype=np_type) if np_type is not object else np.full(dims, b"", dtype=object)
    raise invalid_argument(f"tensor has {array.size} values, shape {dims} needs {size}")


def to_proto(array, proto=None):
    """Encode a NumPy array (numeric into ``tensor_content``; strings into ``string_val``)."""
    array = np.asarray(array)
    if array.dtype.byteorder == ">":  # tensor_content is little-endian
        array = array.astype(array.dtype.newbyteorder("<"))
    proto = proto if proto is not None else tensor_pb2.TensorProto()
    proto.dtype = dtype_enum_of(array)
    proto.tensor_shape.Clear()
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add(size=size)
    if proto.dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1))
    else:
        proto.tensor_content = array.tobytes()  # C order whatever the array's strides
    return proto
