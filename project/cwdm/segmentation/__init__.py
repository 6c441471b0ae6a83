"""Downstream tumour segmentation of completed cases: the BraTS labels and regions and their Dice
(``labels``), the segmenter protocol (``case``), the adapters (``reference``: the shipped SegResNet;
``nnunet``: an nnU-Net v2 model folder; ``command``: any command), how a ``--segmenter`` value becomes
one (``open``), and the training of the reference segmenter (``training``)."""
