"""TFLite Model Metadata for an image classifier, written without tflite-support.

The layout follows what TFLite Model Maker's image classifier wrote through tflite-support's
MetadataPopulator. MediaPipe Tasks' ImageClassifier reads it (tests/test_tflite_metadata.py):

- a ModelMetadata flatbuffer (file identifier "M001") stored in a model buffer that a
  model-level Metadata entry named "TFLITE_METADATA" points to;
- one subgraph with one input tensor "image" (ImageProperties RGB, NormalizationOptions, stats)
  and one output tensor "probability" (FeatureProperties, stats, the labels file as
  TENSOR_AXIS_LABELS);
- the associated files (labels.txt) packed, uncompressed, into a zip archive that is appended
  to the end of the .tflite bytes. Readers find it through the zip's end-of-central-directory
  record, so the flatbuffer in front of it stays valid.

tflite-support itself is not used because it pins protobuf<4, which conflicts with kfp.
"""

from __future__ import annotations

import dataclasses
import io
import zipfile

import flatbuffers
from mediapipe.tasks.metadata import metadata_schema_py_generated as meta_fb
from tensorflow.lite.python import schema_py_generated as tflite_fb
from tensorflow.lite.tools import flatbuffer_utils

METADATA_NAME = "TFLITE_METADATA"
METADATA_FILE_IDENTIFIER = b"M001"
INPUT_TENSOR_NAME = "image"
OUTPUT_TENSOR_NAME = "probability"

# Every field written here (ImageProperties, NormalizationOptions, stats and a TENSOR_AXIS_LABELS
# file without a version) exists since metadata schema 1.0.0; setting AssociatedFile.version,
# for example, would need 1.4.1.
MIN_PARSER_VERSION = "1.0.0"

# A fixed zip timestamp keeps the packed bytes the same for the same model and labels.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


@dataclasses.dataclass(frozen=True)
class ClassifierMetadata:
    """The values that go into the metadata of one image classifier."""

    name: str
    description: str
    version: str
    author: str
    license: str
    labels_file_name: str
    # (pixel - mean) / std maps pixel values in [0, 255] to the float model's input range.
    # The schema expects a quantized model to state the same values as its float model.
    normalization_mean: float
    normalization_std: float
    # The range of the input tensor's own values: [0, 1] for float input, [0, 255] for uint8.
    input_min: float
    input_max: float


def _input_tensor_metadata(info: ClassifierMetadata) -> meta_fb.TensorMetadataT:
    image_properties = meta_fb.ImagePropertiesT()
    image_properties.colorSpace = meta_fb.ColorSpaceType.RGB

    content = meta_fb.ContentT()
    content.contentPropertiesType = meta_fb.ContentProperties.ImageProperties
    content.contentProperties = image_properties

    normalization = meta_fb.NormalizationOptionsT()
    normalization.mean = [float(info.normalization_mean)]
    normalization.std = [float(info.normalization_std)]
    process_unit = meta_fb.ProcessUnitT()
    process_unit.optionsType = meta_fb.ProcessUnitOptions.NormalizationOptions
    process_unit.options = normalization

    stats = meta_fb.StatsT()
    stats.min = [float(info.input_min)]
    stats.max = [float(info.input_max)]

    tensor = meta_fb.TensorMetadataT()
    tensor.name = INPUT_TENSOR_NAME
    tensor.description = "Input image to be classified, RGB."
    tensor.content = content
    tensor.processUnits = [process_unit]
    tensor.stats = stats
    return tensor


def _output_tensor_metadata(info: ClassifierMetadata) -> meta_fb.TensorMetadataT:
    content = meta_fb.ContentT()
    content.contentPropertiesType = meta_fb.ContentProperties.FeatureProperties
    content.contentProperties = meta_fb.FeaturePropertiesT()

    stats = meta_fb.StatsT()
    stats.min = [0.0]
    stats.max = [1.0]

    labels_file = meta_fb.AssociatedFileT()
    labels_file.name = info.labels_file_name
    labels_file.description = "Labels for categories that the model can recognize."
    labels_file.type = meta_fb.AssociatedFileType.TENSOR_AXIS_LABELS

    tensor = meta_fb.TensorMetadataT()
    tensor.name = OUTPUT_TENSOR_NAME
    tensor.description = "Probabilities of the labels respectively."
    tensor.content = content
    tensor.stats = stats
    tensor.associatedFiles = [labels_file]
    return tensor


def build_metadata(info: ClassifierMetadata) -> bytes:
    """Serialize the ModelMetadata flatbuffer of an image classifier."""
    subgraph = meta_fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [_input_tensor_metadata(info)]
    subgraph.outputTensorMetadata = [_output_tensor_metadata(info)]

    model = meta_fb.ModelMetadataT()
    model.name = info.name
    model.description = info.description
    model.version = info.version
    model.author = info.author
    model.license = info.license
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = MIN_PARSER_VERSION

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=METADATA_FILE_IDENTIFIER)
    return bytes(builder.Output())


def _pack_associated_files(files: dict[str, bytes]) -> bytes:
    stream = io.BytesIO()
    # Uncompressed entries let a reader use an associated file's bytes in place, inside the
    # model buffer.
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in sorted(files.items()):
            archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE_TIME), data)
    return stream.getvalue()


def populate_metadata(
    tflite_model: bytes, metadata: bytes, *, associated_files: dict[str, bytes]
) -> bytes:
    """Return tflite_model with metadata embedded and associated_files appended as a zip."""
    if _find_metadata_buffer(tflite_model) is not None:
        raise ValueError(
            f"the model already has a {METADATA_NAME} entry; populate metadata on the converter's "
            "output, not on an exported model"
        )
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_model))

    buffer = tflite_fb.BufferT()
    buffer.data = list(metadata)
    model.buffers.append(buffer)

    entry = tflite_fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = list(model.metadata or []) + [entry]

    model_bytes = flatbuffer_utils.convert_object_to_bytearray(model)
    return bytes(model_bytes) + _pack_associated_files(associated_files)


def _find_metadata_buffer(tflite_model: bytes) -> bytes | None:
    model = tflite_fb.Model.GetRootAs(tflite_model, 0)
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if entry.Name() == METADATA_NAME.encode():
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def read_metadata(tflite_model: bytes) -> meta_fb.ModelMetadataT:
    """Parse the ModelMetadata embedded in a .tflite file's bytes."""
    data = _find_metadata_buffer(tflite_model)
    if data is None:
        raise ValueError(f"the model has no {METADATA_NAME} entry: it was exported without metadata")
    if not meta_fb.ModelMetadata.ModelMetadataBufferHasIdentifier(data, 0):
        raise ValueError(
            f"the {METADATA_NAME} buffer lacks the file identifier "
            f"{METADATA_FILE_IDENTIFIER.decode()}: it is not TFLite Model Metadata"
        )
    return meta_fb.ModelMetadataT.InitFromPackedBuf(data, 0)


def read_associated_files(tflite_model: bytes) -> dict[str, bytes]:
    """Return the files packed in the zip appended to a .tflite file's bytes, by name."""
    with zipfile.ZipFile(io.BytesIO(tflite_model)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}
