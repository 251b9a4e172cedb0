"""Dense-prediction evaluation: segmentation metrics counted over the whole set (mmseg's way) and COCO
box / mask AP through pycocotools, on tiny hand-made data."""
import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from visionssm.dense import evaluation
from visionssm.dense.evaluation import (
    SegmentationMetrics,
    coco_evaluate,
    detections_to_coco,
    evaluate_detection,
    evaluate_segmentation,
)

IGNORE = 255


def same(a, b):
    """Floats (or lists of them) equal, nan equal to nan."""
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def same_dict(a, b):
    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


# --- segmentation metrics ------------------------------------------------------------------------------


def test_ground_truth_as_prediction_scores_one():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 9), generator=g)  # class 3 of 4 never appears
    target[:, :2, :3] = IGNORE
    pred = target.clone()
    pred[target == IGNORE] = 3  # predictions on ignored pixels do not count, not even for class 3
    m = SegmentationMetrics(4)
    m.update(pred, target)
    r = m.compute()
    assert r["mIoU"] == r["aAcc"] == r["mAcc"] == 1.0
    assert r["IoU"][:3] == [1.0, 1.0, 1.0] and math.isnan(r["IoU"][3])
    assert r["Acc"][:3] == [1.0, 1.0, 1.0] and math.isnan(r["Acc"][3])
    assert all(isinstance(v, float) for v in [r["mIoU"], r["aAcc"], r["mAcc"], *r["IoU"], *r["Acc"]])


T1 = [[0, 0, 0, 1],
      [0, 0, 1, 1],
      [1, 1, 1, IGNORE]]
P1 = [[0, 0, 1, 1],
      [0, 1, 1, 1],
      [0, 1, 1, 0]]
T2 = [[1] * 4] * 3  # a second image, all class 1, predicted perfectly
P2 = T2


def by_hand(preds, targets, num_classes):
    """IoU and Acc per class, aAcc, from numpy arrays pixel by pixel."""
    p, t = np.concatenate([np.ravel(x) for x in preds]), np.concatenate([np.ravel(x) for x in targets])
    valid = t != IGNORE
    iou, acc = [], []
    for c in range(num_classes):
        inter = np.sum((p == c) & (t == c) & valid)
        union = np.sum(((p == c) | (t == c)) & valid)
        gt = np.sum((t == c) & valid)
        iou.append(inter / union if union else float("nan"))
        acc.append(inter / gt if gt else float("nan"))
    return iou, acc, np.sum((p == t) & valid) / np.sum(valid)


def test_hand_computed_confusion():
    m = SegmentationMetrics(2)
    m.update(torch.tensor([P1]), torch.tensor([T1]))
    r = m.compute()
    # class 0: 5 true pixels, 4 predicted, 3 shared; class 1: 6 true, 7 predicted, 5 shared; 11 counted pixels
    assert r["IoU"] == pytest.approx([3 / 6, 5 / 8])
    assert r["Acc"] == pytest.approx([3 / 5, 5 / 6])
    assert r["aAcc"] == pytest.approx(8 / 11)
    assert r["mIoU"] == pytest.approx((3 / 6 + 5 / 8) / 2)
    assert r["mAcc"] == pytest.approx((3 / 5 + 5 / 6) / 2)
    iou, acc, aacc = by_hand([P1], [T1], 2)
    assert r["IoU"] == pytest.approx(iou) and r["Acc"] == pytest.approx(acc) and r["aAcc"] == pytest.approx(aacc)


def test_accumulates_over_the_whole_set_not_per_image():
    two = SegmentationMetrics(2)
    two.update(torch.tensor([P1]), torch.tensor([T1]))
    two.update(torch.tensor([P2]), torch.tensor([T2]))
    one = SegmentationMetrics(2)
    one.update(torch.tensor([P1, P2]), torch.tensor([T1, T2]))
    assert same_dict(two.compute(), one.compute())
    r = one.compute()
    iou, _, _ = by_hand([P1, P2], [T1, T2], 2)
    assert r["IoU"] == pytest.approx(iou) and r["IoU"] == pytest.approx([3 / 6, 17 / 20])
    per_image_mean = ((3 / 6 + 5 / 8) / 2 + 1.0) / 2  # image 2 alone: class 0 absent, class 1 perfect
    assert r["mIoU"] == pytest.approx((3 / 6 + 17 / 20) / 2)
    assert abs(r["mIoU"] - per_image_mean) > 0.05

    two.reset()
    two.update(torch.tensor([P2]), torch.tensor([T2]))
    assert two.compute()["mIoU"] == 1.0


def test_logits_equal_their_argmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 6, 7, generator=g)
    target = torch.randint(0, 5, (2, 6, 7), generator=g)
    target[0, 0] = IGNORE
    a, b = SegmentationMetrics(5), SegmentationMetrics(5)
    a.update(logits, target)
    b.update(logits.argmax(1), target)
    assert same_dict(a.compute(), b.compute())
    assert a.device == torch.device("cpu")


def test_bad_input_is_named():
    m = SegmentationMetrics(4)
    with pytest.raises(ValueError, match=r"pred and target.*\(1, 4, 5\).*\(1, 4, 6\)"):
        m.update(torch.zeros(1, 4, 5, dtype=torch.long), torch.zeros(1, 4, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"pred and target.*\(1, 4, 4, 5\).*\(1, 4, 6\)"):
        m.update(torch.zeros(1, 4, 4, 5), torch.zeros(1, 4, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"pred.*C=4.*\(1, 3, 4, 6\)"):
        m.update(torch.zeros(1, 3, 4, 6), torch.zeros(1, 4, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target.*\(4, 6\)"):
        m.update(torch.zeros(4, 6, dtype=torch.long), torch.zeros(4, 6, dtype=torch.long))
    target = torch.zeros(1, 4, 6, dtype=torch.long)
    target[0, 0, 0] = IGNORE  # ignored: fine
    m.update(torch.zeros(1, 4, 6, dtype=torch.long), target)
    target[0, 1, 1] = 7
    with pytest.raises(ValueError, match=r"target.*num_classes=4.*got 7"):
        m.update(torch.zeros(1, 4, 6, dtype=torch.long), target)
    with pytest.raises(ValueError, match=r"pred.*num_classes=4.*got 9"):
        m.update(torch.full((1, 4, 6), 9), torch.zeros(1, 4, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetrics(0)
    with pytest.raises(ValueError, match="class_names"):
        SegmentationMetrics(3, class_names=["a", "b"])


def test_format_table():
    m = SegmentationMetrics(3, class_names=["road", "sky", "tree"])
    m.update(torch.tensor([[[0, 1], [1, 1]]]), torch.tensor([[[0, 1], [0, 1]]]))
    r = m.compute()
    table = m.format_table(r)
    lines = table.splitlines()
    assert len(lines) == 2 + 3 + 1 and lines[0].startswith("| class")
    assert "| road" in table and "50.00" in table and "nan" in lines[4]
    assert "| a " in m.format_table(r, ["a", "b", "c"])


def test_compute_before_any_update_is_nan():
    r = SegmentationMetrics(2).compute()
    assert math.isnan(r["mIoU"]) and math.isnan(r["aAcc"])


def test_missing_torchmetrics_says_how_to_install(monkeypatch):
    monkeypatch.setattr(evaluation, "_CONFMAT_CLASS", None)
    monkeypatch.setitem(sys.modules, "torchmetrics.classification", None)
    with pytest.raises(ImportError, match="pip install torchmetrics"):
        SegmentationMetrics(2)


# --- evaluate_segmentation -------------------------------------------------------------------------------


class Oracle(nn.Module):
    """Reads the label off the image (channel 0 holds it) and returns confident logits for it."""

    def __init__(self, num_classes, scale=1):
        super().__init__()
        self.num_classes, self.scale = num_classes, scale

    def forward(self, x):
        labels = x[:, 0].round().long().clamp(0, self.num_classes - 1)
        logits = 20.0 * F.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).float()
        if self.scale != 1:
            logits = logits[..., ::self.scale, ::self.scale]
        return {"out": logits}


def labelled_images(masks):
    return [m.clamp(max=2).float().expand(3, *m.shape).clone() for m in masks]


def test_evaluate_segmentation_batches_and_lists():
    g = torch.Generator().manual_seed(2)
    masks = [torch.randint(0, 3, (6, 8), generator=g) for _ in range(4)]
    masks[0][0, :4] = IGNORE
    images = labelled_images(masks)
    batched = torch.utils.data.DataLoader(list(zip(images, masks)), batch_size=2)
    model = Oracle(4).train()
    r = evaluate_segmentation(model, batched, "cpu", 4, loss_fn=nn.CrossEntropyLoss(ignore_index=IGNORE))
    assert model.training  # mode restored
    assert r["mIoU"] == r["aAcc"] == r["mAcc"] == 1.0 and math.isnan(r["IoU"][3])
    assert 0 <= r["loss"] < 1e-6

    # images of different sizes, given as lists (the validation collate for whole-image evaluation)
    sized = [torch.randint(0, 3, (5 + i, 7 + 2 * i), generator=g) for i in range(3)]
    lists = torch.utils.data.DataLoader(list(zip(labelled_images(sized), sized)), batch_size=3,
                                        collate_fn=lambda b: tuple(list(x) for x in zip(*b)))
    r = evaluate_segmentation(Oracle(3), lists, "cpu", 3)
    assert r["mIoU"] == 1.0 and "loss" not in r


def test_evaluate_segmentation_matches_metrics_and_resizes():
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 4, 3, padding=1)

    class Net(nn.Module):
        def forward(self, x):
            return {"out": conv(x)}

    images = [torch.randn(3, 6 + i, 9 - i) for i in range(3)]
    masks = [torch.randint(0, 4, im.shape[1:]) for im in images]
    masks[1][2] = IGNORE
    loader = [(images[:2], masks[:2]), ([images[2]], torch.stack([masks[2]]))]
    r = evaluate_segmentation(Net(), loader, "cpu", 4, autocast=torch.no_grad)
    ref = SegmentationMetrics(4)
    with torch.no_grad():
        for im, mk in zip(images, masks):
            ref.update(conv(im[None]), mk[None])
    assert same_dict(r, ref.compute())

    # logits at half the mask's size are resized to it (bilinear), as mmseg resizes to the original image
    masks = [torch.randint(0, 3, (8, 12)) for _ in range(2)]
    r = evaluate_segmentation(Oracle(3, scale=2), [(torch.stack(labelled_images(masks)), torch.stack(masks))],
                              "cpu", 3)
    assert 0 < r["aAcc"] <= 1


def test_evaluate_segmentation_slide_uses_slide_inference(monkeypatch):
    calls = []

    def slide_inference(model, x, num_classes, crop_size, stride):
        calls.append((tuple(x.shape), num_classes, crop_size, stride))
        return model(x)["out"]

    monkeypatch.setitem(sys.modules, "visionssm.dense.models",
                        types.SimpleNamespace(slide_inference=slide_inference))
    masks = [torch.randint(0, 3, (6, 8)) for _ in range(2)]
    loader = [(torch.stack(labelled_images(masks)), torch.stack(masks))]
    r = evaluate_segmentation(Oracle(3), loader, "cpu", 3, mode="slide", crop_size=(4, 4), stride=(2, 2))
    assert r["mIoU"] == 1.0 and calls == [((2, 3, 6, 8), 3, (4, 4), (2, 2))]
    with pytest.raises(ValueError, match="crop_size and stride"):
        evaluate_segmentation(Oracle(3), loader, "cpu", 3, mode="slide")
    with pytest.raises(ValueError, match="mode.*'whole' or 'slide'.*'tiles'"):
        evaluate_segmentation(Oracle(3), loader, "cpu", 3, mode="tiles")


# --- COCO detection ---------------------------------------------------------------------------------------

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_util  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

SIZES = {11: (40, 50), 12: (30, 30)}  # image id -> (height, width)
LABEL_TO_CAT = {1: 3, 2: 7}  # contiguous detector labels -> COCO's non-contiguous category ids


def object_masks():
    """image id -> [(category id, binary mask)]: an L shape and two rectangles."""
    a = np.zeros(SIZES[11], np.uint8)
    a[5:20, 4:12] = 1
    a[15:20, 12:24] = 1
    b = np.zeros(SIZES[11], np.uint8)
    b[22:36, 30:45] = 1
    c = np.zeros(SIZES[12], np.uint8)
    c[3:13, 10:26] = 1
    return {11: [(3, a), (7, b)], 12: [(7, c)]}


def encode(mask):
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@pytest.fixture(scope="module")
def coco_gt():
    anns, k = [], 0
    for image_id, objects in object_masks().items():
        for cat, mask in objects:
            k += 1
            rle = encode(mask)
            anns.append(dict(id=k, image_id=image_id, category_id=cat, segmentation=rle, iscrowd=0,
                             area=float(mask_util.area(rle)), bbox=mask_util.toBbox(rle).tolist()))
    gt = COCO()
    gt.dataset = dict(images=[dict(id=i, height=h, width=w) for i, (h, w) in SIZES.items()],
                      categories=[dict(id=3, name="cat"), dict(id=7, name="dog")], annotations=anns)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("builtins.print", lambda *a, **k: None)
        gt.createIndex()
    return gt


def gt_outputs(with_masks=True, shift=None):
    """The ground truth as torchvision detector outputs (score 1), one dict per image of SIZES."""
    cat_to_label = {c: lab for lab, c in LABEL_TO_CAT.items()}
    outs = []
    for objects in object_masks().values():
        boxes = []
        for _, mask in objects:
            x, y, w, h = mask_util.toBbox(encode(mask)).tolist()
            boxes.append([x, y, x + w, y + h])
        out = dict(boxes=torch.tensor(boxes), labels=torch.tensor([cat_to_label[c] for c, _ in objects]),
                   scores=torch.ones(len(objects)))
        if with_masks:
            out["masks"] = torch.stack([torch.from_numpy(m).float() * 0.9 for _, m in objects])[:, None]
        outs.append(out)
    if shift is not None:
        outs[0]["boxes"][0] += torch.tensor([shift, 0.0, shift, 0.0])
    return outs


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools' decode, numpy 2
def test_detections_to_coco_format():
    outs = gt_outputs()
    res = detections_to_coco(outs, list(SIZES), LABEL_TO_CAT)
    assert [r["category_id"] for r in res] == [3, 7, 7] and [r["image_id"] for r in res] == [11, 11, 12]
    assert res[2]["bbox"] == [10.0, 3.0, 16.0, 10.0] and res[2]["score"] == 1.0
    seg = res[0]["segmentation"]
    assert isinstance(seg["counts"], str) and seg["size"] == [40, 50]
    assert np.array_equal(mask_util.decode(seg), object_masks()[11][0][1])
    assert "segmentation" not in detections_to_coco(gt_outputs(with_masks=False), list(SIZES), LABEL_TO_CAT)[0]
    with pytest.raises(ValueError, match=r"label_to_cat.*\[2\]"):
        detections_to_coco(outs, list(SIZES), {1: 3})
    with pytest.raises(ValueError, match="image_ids"):
        detections_to_coco(outs, [11], LABEL_TO_CAT)


def test_ground_truth_as_detections_scores_one(coco_gt, capsys):
    results = detections_to_coco(gt_outputs(), list(SIZES), LABEL_TO_CAT)
    before = [dict(r) for r in results]
    r = coco_evaluate(coco_gt, results)
    assert capsys.readouterr().out == ""  # pycocotools' printing is silenced
    assert results == before  # loadRes's additions went to copies
    for t in ("bbox", "segm"):
        assert r[f"{t}_AP"] == r[f"{t}_AP50"] == r[f"{t}_AP75"] == r[f"{t}_APs"] == 1.0
        assert math.isnan(r[f"{t}_APm"]) and math.isnan(r[f"{t}_APl"])  # no medium / large objects: -1 -> nan
    assert set(r) == {f"{t}_{s}" for t in ("bbox", "segm") for s in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    coco_evaluate(coco_gt, results, iou_types=("bbox",), verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_wrong_detections_score_less(coco_gt):
    shifted = coco_evaluate(coco_gt, detections_to_coco(gt_outputs(shift=7.0), list(SIZES), LABEL_TO_CAT),
                            iou_types=("bbox",))
    assert shifted["bbox_AP50"] < 1.0  # the 8 px wide stroke moved by 7 px: box IoU below 0.5
    swapped = coco_evaluate(coco_gt, detections_to_coco(gt_outputs(), list(SIZES), {1: 7, 2: 3}))
    assert swapped["bbox_AP"] < 1.0 and swapped["segm_AP"] < 1.0

    # image 12's object missed: AP drops, unless the evaluation keeps to image 11
    only_11 = detections_to_coco(gt_outputs()[:1], [11], LABEL_TO_CAT)
    assert coco_evaluate(coco_gt, only_11)["bbox_AP"] < 1.0
    assert coco_evaluate(coco_gt, only_11, image_ids=[11])["bbox_AP"] == pytest.approx(1.0)


def test_empty_and_bad_results(coco_gt):
    empty = [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long), scores=torch.zeros(0),
                  masks=torch.zeros(0, 1, *SIZES[i])) for i in SIZES]
    results = detections_to_coco(empty, list(SIZES), LABEL_TO_CAT)
    assert results == []
    r = coco_evaluate(coco_gt, results)
    assert len(r) == 12 and all(v == 0.0 for v in r.values())
    with pytest.raises(ValueError, match="segmentation"):
        coco_evaluate(coco_gt, detections_to_coco(gt_outputs(with_masks=False), list(SIZES), LABEL_TO_CAT))
    with pytest.raises(ValueError, match=r"image ids.*\[99\]"):
        coco_evaluate(coco_gt, [dict(image_id=99, category_id=3, bbox=[0, 0, 1, 1], score=1.0)], iou_types="bbox")
    with pytest.raises(ValueError, match="iou_types"):
        coco_evaluate(coco_gt, [], iou_types=("keypoints",))


def test_missing_pycocotools_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(ImportError, match="pip install pycocotools"):
        coco_evaluate(None, [])


class FixedDetector(nn.Module):
    """Returns the ground truth of the image with that size, as a torchvision detector would."""

    def __init__(self, with_masks=True):
        super().__init__()
        self.by_size = {SIZES[i]: out for i, out in zip(SIZES, gt_outputs(with_masks))}
        self.seen_training = []

    def forward(self, images):
        self.seen_training.append(self.training)
        return [{k: v.clone() for k, v in self.by_size[tuple(im.shape[-2:])].items()} for im in images]


def detection_loader():
    items = [(torch.rand(3, *SIZES[i]), dict(image_id=i if i == 11 else torch.tensor(i))) for i in SIZES]
    return torch.utils.data.DataLoader(items, batch_size=2, collate_fn=lambda b: tuple(zip(*b)))


def test_evaluate_detection(coco_gt):
    model = FixedDetector().train()
    r = evaluate_detection(model, detection_loader(), "cpu", coco_gt, LABEL_TO_CAT)
    assert r["bbox_AP"] == r["segm_AP"] == 1.0 and model.training and model.seen_training == [False]

    # without masks (Faster R-CNN) "segm" is dropped; a gather that repeats every image (a padded distributed
    # sampler) does not count an image twice
    gathered = []

    def gather(entries):
        gathered.append(len(entries))
        return entries + entries

    r = evaluate_detection(FixedDetector(with_masks=False), detection_loader(), "cpu", coco_gt, LABEL_TO_CAT,
                           gather=gather)
    assert gathered == [2] and set(r) == {f"bbox_{s}" for s in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    assert r["bbox_AP"] == 1.0



DDP_RANK = """
import datetime, importlib.util, json, sys
import torch, torch.distributed as dist


def run(ev, rank, init_file, pred, target):
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        m = ev.SegmentationMetrics(2)
        m.update(torch.tensor([pred]), torch.tensor([target]))

        class Net(torch.nn.Module):
            def forward(self, x):
                return {"out": torch.nn.functional.one_hot(torch.tensor([pred]), 2).permute(0, 3, 1, 2).float()}

        loader = [(torch.zeros(1, 3, 3, 4), torch.tensor([target]))]
        r = ev.evaluate_segmentation(Net(), loader, "cpu", 2, loss_fn=lambda logits, masks: torch.tensor(rank + 1.0))
        return [m.compute()["IoU"], r["IoU"], r["loss"]]
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    # this file alone, not the package: importing visionssm (its models) would cost seconds
    spec = importlib.util.spec_from_file_location("evaluation", sys.argv[1])
    ev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ev)
    print(json.dumps(run(ev, int(sys.argv[3]), sys.argv[2], *json.loads(sys.argv[4]))))
"""


@pytest.mark.slow
def test_ranks_sum_their_confusion_matrices(tmp_path):
    """Under DDP torchmetrics sums the matrices over the ranks in compute(): each rank sees the whole set.
    Rank 0 is this process, rank 1 a child."""
    import json
    import subprocess

    store = str(tmp_path / "store")
    child = subprocess.Popen([sys.executable, "-c", DDP_RANK, evaluation.__file__, store, "1", json.dumps([P2, T2])],
                             stdout=subprocess.PIPE, text=True)
    program = {}
    exec(DDP_RANK, program)
    try:
        here = program["run"](evaluation, 0, store, P1, T1)
    finally:
        out = child.communicate(timeout=120)[0]
    assert child.returncode == 0
    for iou, seg_iou, loss in (here, json.loads(out.strip().splitlines()[-1])):
        assert iou == seg_iou == pytest.approx([3 / 6, 17 / 20])  # not one rank's image ([3/6, 5/8] alone)
        assert loss == pytest.approx(1.5)  # the ranks' losses 1 and 2, averaged over both
