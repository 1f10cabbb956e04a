"""parsenet: ParseNet (Liu, Rabinovich & Berg 2015) and its FCN baseline, with data, training and metrics."""
from parsenet.checkpoint import TrainedModel, load_checkpoint, load_trained_model, save_checkpoint
from parsenet.config import ParseNetConfig
from parsenet.data import DatasetInfo, SegmentationDataset, build_dataset, dataset_names, denormalize, export_folder
from parsenet.layers import L2Norm, Upsample
from parsenet.metrics import ConfusionMatrix, SegmentationMetrics, metrics_table
from parsenet.model import ParseNet, build_model, min_input_size, parameter_groups
from parsenet.model_loader import load_checkpoint_model  # registers our checkpoints as erf model specs
from parsenet.presets import PRESETS, merge_options, preset
from parsenet.pretrained import convert_vgg16_state_dict, load_vgg16_backbone
from parsenet.trainer import TrainConfig, evaluate, evaluate_checkpoint, load_run_config, train

__all__ = [
    "ParseNetConfig", "ParseNet", "build_model", "min_input_size", "parameter_groups", "L2Norm", "Upsample",
    "load_vgg16_backbone", "convert_vgg16_state_dict",
    "DatasetInfo", "SegmentationDataset", "build_dataset", "dataset_names", "denormalize", "export_folder",
    "ConfusionMatrix", "SegmentationMetrics", "metrics_table",
    "TrainConfig", "train", "evaluate", "evaluate_checkpoint", "load_run_config", "PRESETS", "preset", "merge_options",
    "save_checkpoint", "load_checkpoint", "TrainedModel", "load_trained_model",
    "load_checkpoint_model",
]
