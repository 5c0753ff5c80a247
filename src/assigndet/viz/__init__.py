"""Pictures: images read for prediction, boxes drawn on them, the plots of training runs, a look
at a dataset.

Library code for the command line (``predict``, ``demo``, ``plot``, ``browse``) and for
notebooks; it knows the detector output format (``dict(boxes, scores, labels)``), the dataset
targets and the files of a run directory, nothing of the engine.

- :mod:`.images`: image files in and out; :mod:`.draw`: boxes and labels drawn legibly;
- :mod:`.runs`: a run directory's files; :mod:`.plots`: their plots (``write_run_plots``);
- :mod:`.browse`: the dataset overview of ``assigndet browse``.
"""
from .browse import dataset_summary, write_browse
from .draw import (DRAW_MIN_SIDE, DRAW_NMS_IOU, class_color, dedup_for_drawing, draw_boxes, draw_ground_truth,
                   draw_predictions, draw_side_by_side)
from .images import IMAGE_SUFFIXES, collect_images, read_image, write_image
from .plots import plot_loss_curve, write_plots, write_run_plots
from .runs import RunData, is_run_dir, load_run, run_labels

__all__ = ["IMAGE_SUFFIXES", "collect_images", "read_image", "write_image", "DRAW_MIN_SIDE", "DRAW_NMS_IOU",
           "class_color", "draw_boxes", "dedup_for_drawing", "draw_predictions", "draw_ground_truth",
           "draw_side_by_side", "RunData", "is_run_dir", "load_run", "run_labels", "plot_loss_curve",
           "write_plots", "write_run_plots", "dataset_summary", "write_browse"]
