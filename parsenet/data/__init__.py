"""Datasets and joint transforms for training ParseNet and its FCN baseline.

``build_dataset(spec, split, ...)`` is the entry point; ``dataset_names()`` lists
the kinds. Items are ``(image (3, H, W) float32 normalised, labels (H, W) int64)``
with 255 for void; ``dataset.raw(i)`` gives the untransformed uint8 arrays and
``dataset.check()`` validates every file up front.
"""
from parsenet.data.base import IGNORE_INDEX, DatasetInfo, SegmentationDataset, voc_palette
from parsenet.data.build import build_dataset, dataset_names
from parsenet.data.formats import (CamVid, FolderDataset, PascalContext, SiftFlow, VOCSegmentationData,
                                   export_folder, read_classes_txt)
from parsenet.data.scenes import ContextScenes, SceneConfig, render_scene, scene_classes
from parsenet.data.transforms import SegmentationTransform, build_transform, denormalize

__all__ = [
    "DatasetInfo", "SegmentationDataset", "IGNORE_INDEX", "voc_palette",
    "build_dataset", "dataset_names",
    "CamVid", "VOCSegmentationData", "SiftFlow", "PascalContext", "FolderDataset", "export_folder",
    "read_classes_txt",
    "ContextScenes", "SceneConfig", "render_scene", "scene_classes",
    "SegmentationTransform", "build_transform", "denormalize",
]
