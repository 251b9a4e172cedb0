"""Dense prediction: semantic segmentation (UperNet) and detection / instance segmentation
(torchvision's Mask R-CNN) over this library's backbones, their data sets and their metrics."""
