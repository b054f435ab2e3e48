"""Compatibility layers for code written against other CAM libraries; camkit's own maps underneath.

``camkit.compat.pytorch_grad_cam`` takes pytorch-grad-cam's constructor,
call, target classes and ``show_cam_on_image``. Importing it does not need
pytorch-grad-cam installed.
"""
