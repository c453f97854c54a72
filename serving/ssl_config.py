"""TF Serving's ``SSLConfig`` (``--ssl_config_file``), declared here because the
``tensorflow-serving-api`` wheel does not ship ssl_config.proto. Text format, fields
``server_key``, ``server_cert``, ``custom_ca`` (PEM strings) and ``client_verify``."""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format


def _ssl_config_class():
    pool = descriptor_pool.DescriptorPool()
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="tfrec_kuai_serving/ssl_config.proto", package="tensorflow.serving", syntax="proto3")
    message = file_proto.message_type.add(name="SSLConfig")
    F = descriptor_pb2.FieldDescriptorProto
    for number, name in enumerate(("server_key", "server_cert", "custom_ca"), start=1):
        message.field.add(name=name, number=number, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, json_name=name)
    message.field.add(name="client_verify", number=4, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL, json_name="client_verify")
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.SSLConfig"))


SSLConfig = _ssl_config_class()


def read_ssl_config(path):
    with open(path) as f:
        return text_format.Parse(f.read(), SSLConfig())
