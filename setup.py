"""Packaging for ciss_tf, a TensorFlow 2 / Keras 3 reproduction of CiSS-Net."""

import setuptools

setuptools.setup(
    name="ciss_tf",
    version="0.1.0",
    description=(
        "Context-Reinforced Semantic Segmentation (CiSS-Net) in TensorFlow 2 / Keras 3"
    ),
    packages=setuptools.find_packages(include=["ciss_tf", "ciss_tf.*", "data_prep", "data_prep.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow==2.21.0",
        "keras==3.15.1",
        "tensorboard==2.21.0",  # tf.summary needs it; TF 2.21 no longer pulls it in
        "tensorflow-datasets==4.9.10",
        "numpy==2.4.6",
        "absl-py==2.5.1",
        # Headless build of opencv-python: same cv2 API, no GUI libraries needed on servers.
        "opencv-python-headless==5.0.0.93",
        "cityscapesscripts==2.3.0",
        # tensorflow-datasets imports it on every Python but declares it only for < 3.9.
        "importlib_resources==7.1.0",
    ],
    extras_require={"test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "ruff==0.17.6"]},
    entry_points={
        "console_scripts": [
            "ciss-train=ciss_tf.train:run",
            "ciss-evaluate=ciss_tf.evaluate:run",
            "ciss-export=ciss_tf.export:run",
            "ciss-predict=ciss_tf.predict:run",
            "ciss-demo=ciss_tf.demo:run",
            "ciss-benchmark=ciss_tf.benchmark:run",
            "ciss-import-pspnet=ciss_tf.convert.import_pspnet:run",
            "ciss-build-tfrecords=data_prep.build_tfrecords:run",
        ]
    },
)
