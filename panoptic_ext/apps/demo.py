"""Run a trained model on image files (pictures, COCO panoptic PNGs and a JSON) or on a video
or webcam (an annotated video, or a window).

The logic behind tools/demo.py, kept importable so it can be tested and reused.
"""

import glob
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.engine import DefaultPredictor
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer
from tqdm import tqdm

from ..data.metadata import contiguous_to_dataset_ids, dataset_categories
from ..deploy import runner_io
from ..deploy.runtime import attach_runtime
from ..engine.defaults import panoptic_metadata
from ..engine.weights import load_weights, trust_weights_file
from ..formats import id_to_rgb, write_panoptic_png
from ..modeling.meta_arch import PanopticFPNExt
from ..utils.io import atomic_write_json
from ..utils.paths import check_output_file, refuse_replacing_inputs

__all__ = [
    "IMAGE_EXTENSIONS",
    "VideoSourceError",
    "coco_segments",
    "collect_inputs",
    "panoptic_to_coco",
    "PanopticDemo",
    "read_image",
    "to_8bit",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def collect_inputs(patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """Expand files, folders (their images, sorted) and glob patterns.

    Returns (files, problems): a pattern that matches nothing is a problem, not silence.
    """
    files: list[str] = []
    problems: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, f)
                for f in os.listdir(pattern)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                exts = ", ".join(IMAGE_EXTENSIONS)
                problems.append(f"{pattern}: folder has no image files ({exts})")
            files.extend(found)
        elif os.path.exists(pattern):
            files.append(pattern)
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
            if not found:
                problems.append(f"{pattern}: no such file, and no file matches it as a pattern")
            files.extend(found)
    seen = set()
    unique = []
    for f in files:
        key = os.path.abspath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


to_8bit = runner_io.to_8bit  # one rule for every mode, shared with the exported runners


def read_image(path: str, format: str = "BGR") -> np.ndarray:
    """HxWx3 uint8 in ``format`` (BGR or RGB), upright per EXIF, every PIL mode converted
    by :func:`to_8bit` (Detectron2's reader clips 16-bit images)."""
    return np.ascontiguousarray(runner_io.read_image(path, format))


def panoptic_to_coco(
    panoptic: np.ndarray, segments_info: list[dict[str, Any]], metadata
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """COCO panoptic RGB PNG array and segments_info (see `coco_segments`)."""
    return id_to_rgb(panoptic.astype(np.int64)), coco_segments(panoptic, segments_info, metadata)


def coco_segments(
    panoptic: np.ndarray, segments_info: list[dict[str, Any]], metadata
) -> list[dict[str, Any]]:
    """COCO panoptic segments_info (dataset category ids, area, bbox) of an id map.

    Areas and boxes are measured on the final map, so they agree with the PNG exactly.
    Segments that ended with no pixel are left out (they are not in the PNG).
    """
    thing_map, stuff_map = contiguous_to_dataset_ids(metadata)
    ids = panoptic.astype(np.int64)
    out: list[dict[str, Any]] = []
    for seg in segments_info:
        mask = ids == seg["id"]
        area = int(mask.sum())
        if area == 0:
            continue
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
        contiguous = int(seg["category_id"])
        table = thing_map if seg["isthing"] else stuff_map
        if contiguous not in table:
            raise KeyError(
                f"{'thing' if seg['isthing'] else 'stuff'} class {contiguous} predicted by the "
                f"model is not in the metadata of '{getattr(metadata, 'name', '?')}' "
                f"({len(table)} classes): the model's heads and DATASETS.TEST disagree"
            )
        entry = {
            "id": int(seg["id"]),
            "category_id": int(table[contiguous]),
            "isthing": bool(seg["isthing"]),
            "iscrowd": 0,
            "area": area,
            "bbox": bbox,
        }
        if seg["isthing"] and "score" in seg:
            entry["score"] = float(seg["score"])
        out.append(entry)
    return out


class VideoSourceError(OSError):
    """A video file or camera that cannot be opened or decoded, or a window that cannot open."""


def _check_gui(cv2) -> None:
    """Fail early and clearly where OpenCV has no GUI (opencv-python-headless)."""
    try:
        cv2.namedWindow(_WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error as e:
        raise VideoSourceError(
            "cannot open a window: this OpenCV has no GUI support (opencv-python-headless?). "
            "Install opencv-python for --webcam, or use --video-input FILE --output out.mp4"
        ) from e


def _video_output_path(source: str | int, output: str) -> str:
    """`output` itself, or `output`/<video stem>.mp4 when it names a folder."""
    if os.path.isdir(output) or output.endswith(os.sep):
        stem = f"webcam{source}" if isinstance(source, int) else os.path.splitext(
            os.path.basename(source))[0]
        return os.path.join(output, stem + ".mp4")
    return output


_WINDOW = "panoptic_ext"


class PanopticDemo:
    """Predicts one image at a time and renders/serialises the panoptic result."""

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg
        self.metadata = panoptic_metadata(cfg)  # first: a bad dataset fails before the model
        unloaded = cfg.clone()
        unloaded.defrost()
        unloaded.MODEL.WEIGHTS = ""  # loaded below by the one weights loader, checked
        unloaded.freeze()
        self.predictor = DefaultPredictor(unloaded)
        attach_runtime(self.predictor.model, cfg)  # TEST.RUNTIME
        load_weights(self.predictor.model, cfg.MODEL.WEIGHTS, purpose="the demo",
                     dataset=self.metadata.name, trust_file=trust_weights_file(cfg))
        self.cpu = torch.device("cpu")

    def predict(self, image_bgr: np.ndarray) -> dict[str, Any]:
        return self.predict_batch([image_bgr])[0]

    def predict_batch(self, images_bgr: Sequence[np.ndarray],
                      outputs: Sequence[str] = ("panoptic_seg",)) -> list[dict[str, Any]]:
        """One model call for several images, each prepared as DefaultPredictor does (resize,
        channel order); the server batches with it, the demo calls it with one image. Both use
        only "panoptic_seg", so by default our model is asked for that alone (it then skips the
        full-size semantic logits and the masks the merge does not read; the panoptic result is
        the same). Detectron2's own model always returns all its outputs."""
        p = self.predictor
        inputs = []
        for image in images_bgr:
            if p.input_format == "RGB":
                image = image[:, :, ::-1]
            h, w = image.shape[:2]
            resized = p.aug.get_transform(image).apply_image(image)
            tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
            inputs.append({"image": tensor.to(p.cfg.MODEL.DEVICE), "height": h, "width": w})
        with torch.no_grad():
            if isinstance(p.model, PanopticFPNExt):
                return p.model.inference(inputs, outputs=tuple(outputs))
            return p.model(inputs)

    def coco(self, predictions: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(id map, COCO segments_info with dataset ids): what the panoptic PNG and
        predictions.json hold for one image (the demo's files and the server's answers)."""
        panoptic, segments = predictions["panoptic_seg"]
        ids = panoptic.to(self.cpu).numpy()
        return ids, coco_segments(ids, segments, self.metadata)

    def draw(self, image_bgr: np.ndarray, predictions: dict[str, Any]) -> np.ndarray:
        """RGB picture of the panoptic result drawn by Detectron2's Visualizer."""
        panoptic, segments = predictions["panoptic_seg"]
        # Small images are drawn enlarged so the labels stay readable.
        scale = max(1.0, 384.0 / max(image_bgr.shape[:2]))
        vis = Visualizer(image_bgr[:, :, ::-1], self.metadata, scale=scale,
                         instance_mode=ColorMode.IMAGE)
        return vis.draw_panoptic_seg(panoptic.to(self.cpu), segments).get_image()

    def run_video(self, source: str | int, output: str | None = None) -> int:
        """Annotate every frame of a video file (or camera index) into `output` (mp4v; a
        folder gets <stem>.mp4) or, without `output`, into a window (Esc stops).

        Instance colours follow instances across frames (Detectron2's VideoVisualizer).
        Returns the number of frames processed; raises VideoSourceError naming the source when
        it cannot be opened or yields no frame.
        """
        import cv2

        name = f"webcam {source}" if isinstance(source, int) else f"video {source}"
        if output is None:
            _check_gui(cv2)
        if isinstance(source, str) and not os.path.isfile(source):
            raise VideoSourceError(f"cannot read {name}: no such file")
        path = _video_output_path(source, output) if output else None
        if path is not None:  # before any frame: a bad output, or the video itself
            check_output_file(path)
            refuse_replacing_inputs([path], [source] if isinstance(source, str) else [])
        cap = cv2.VideoCapture(source)
        if not cap.isOpened():
            raise VideoSourceError(f"cannot read {name}: OpenCV cannot open it as a video")
        fps = cap.get(cv2.CAP_PROP_FPS)
        fps = fps if fps and np.isfinite(fps) and fps > 0 else 30.0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        visualizer = VideoVisualizer(self.metadata, ColorMode.IMAGE)
        writer = None
        frames = 0
        try:
            with tqdm(total=total if total > 0 else None, desc="demo", unit="frame") as bar:
                while True:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    panoptic, segments = self.predict(frame)["panoptic_seg"]
                    vis = visualizer.draw_panoptic_seg_predictions(
                        frame[:, :, ::-1], panoptic.to(self.cpu), segments
                    ).get_image()
                    bgr = np.ascontiguousarray(vis[:, :, ::-1])
                    if path is None:
                        cv2.imshow(_WINDOW, bgr)
                        if cv2.waitKey(1) == 27:  # Esc
                            break
                    else:
                        if writer is None:
                            writer = self._open_writer(cv2, path, fps, bgr.shape)
                        writer.write(bgr)
                    frames += 1
                    bar.update(1)
        finally:
            cap.release()
            if writer is not None:
                writer.release()
            if path is None:
                cv2.destroyAllWindows()
        if frames == 0:
            raise VideoSourceError(f"cannot read {name}: no frame could be decoded")
        return frames

    def show_files(self, files: Sequence[str]) -> int:
        """Show each result in a window (any key: next, Esc: stop); returns the number of
        files that could not be read (reported on stderr)."""
        import cv2

        failed = 0
        for path in files:
            try:
                image = read_image(path, format="BGR")
            except Exception as e:  # corrupt or unreadable: report, keep going
                print(f"ERROR: cannot read image {path}: {e}", file=sys.stderr)
                failed += 1
                continue
            picture = self.draw(image, self.predict(image))
            try:
                cv2.imshow(_WINDOW, np.ascontiguousarray(picture[:, :, ::-1]))
            except cv2.error as e:
                raise VideoSourceError(
                    f"cannot open a window ({e}); pass --output DIR to save results") from e
            if cv2.waitKey(0) == 27:  # Esc quits
                break
        return failed

    @staticmethod
    def _open_writer(cv2, path: str, fps: float, shape: tuple[int, ...]):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                 (shape[1], shape[0]), True)
        if not writer.isOpened():
            raise OSError(f"cannot write video {path} (OpenCV VideoWriter, mp4v)")
        return writer

    def run_files(self, files: Sequence[str], output: str) -> list[str]:
        """Process files into `output`; returns the files that failed (reported on stderr).

        The folder is checked and locked first (:func:`runner_io.output_run`): an output
        that would replace an input, or a second run into the folder, is refused."""
        with runner_io.output_run(files, output):
            return self._run_files(files, output)

    def _run_files(self, files: Sequence[str], output: str) -> list[str]:
        failed: list[str] = []
        annotations = []
        for path in tqdm(files, desc="demo", unit="img"):
            try:
                image = read_image(path, format="BGR")
            except Exception as e:  # corrupt or unreadable: report, keep going
                print(f"ERROR: cannot read image {path}: {e}", file=sys.stderr)
                failed.append(path)
                continue
            predictions = self.predict(image)
            ids, seg_json = self.coco(predictions)
            stem = os.path.splitext(os.path.basename(path))[0]
            write_panoptic_png(os.path.join(output, "panoptic", stem + ".png"), ids)
            runner_io.save_image(self.draw(image, predictions),
                                 os.path.join(output, runner_io.picture_name(path)))
            annotations.append(
                {
                    "image_id": stem,
                    "file_name": stem + ".png",
                    "image_file": os.path.abspath(path),
                    "height": int(ids.shape[0]),
                    "width": int(ids.shape[1]),
                    "segments_info": seg_json,
                }
            )
        atomic_write_json(os.path.join(output, "predictions.json"), {
            "annotations": annotations,
            "categories": dataset_categories(self.metadata),
        })
        return failed
