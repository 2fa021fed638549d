"""segeig: unsupervised semantic segmentation by learned neural eigenfunctions."""
