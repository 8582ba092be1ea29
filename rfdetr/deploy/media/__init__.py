"""From images and videos to pictures and results: what ``python -m rfdetr.predict`` does with a model.

* :mod:`~rfdetr.deploy.media.predict`: predict over image files, write pictures and COCO JSON;
* :mod:`~rfdetr.deploy.media.sources`: what ``--source`` names, and the frames of videos, cameras and streams;
* :mod:`~rfdetr.deploy.media.video`: the video loop and its writers; :mod:`~rfdetr.deploy.media.track`: ByteTrack;
* :mod:`~rfdetr.deploy.media.visualize`: drawing boxes, masks and labels.
"""
