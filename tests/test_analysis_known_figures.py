"""Receptive fields of classic networks against published figures, and AlexNet's productive layers at 32x32.

The networks are defined here (no torchvision) with thin layers: a receptive field does not depend on
channel counts, and thin layers keep the tests fast.
"""

import torch
from torch import nn

from rfdeploy.analysis import analyze


class AlexNet(nn.Module):
    """torchvision's AlexNet layout: features.{0,3,6,8,10} are conv1..conv5, features.{2,5,12} max pools."""

    def __init__(self, width: int = 4):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(w, w, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(w * 36, 16), nn.ReLU(inplace=True), nn.Linear(16, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


ALEXNET_CONVS = ["features.0", "features.3", "features.6", "features.8", "features.10"]


def vgg16(width: int = 4) -> nn.Module:
    layers, channels = [], 3
    for item in [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"]:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item * width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = item * width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(channels * 49, 10))


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits in the 3x3 conv."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet50(nn.Module):
    def __init__(self, width: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4 * width, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(4 * width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        inplanes, stages = 4 * width, []
        for index, (blocks, stride) in enumerate(zip((3, 4, 6, 3), (1, 2, 2, 2))):
            planes = width * 2 ** index
            stage = [Bottleneck(inplanes, planes, stride)] + [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            inplanes = planes * 4
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_vgg16_receptive_field_is_212():
    # Per block (r, jump): two 3x3 convs add 2 * 2j, the 2x2 pool adds j and doubles j.
    # block1: 1+2+2=5, pool 6 (j=2); block2: 6+4+4=14, pool 16 (j=4); block3: 16+3*8=40, pool 44 (j=8);
    # block4: 44+3*16=92, pool 100 (j=16); block5: 100+3*32=196, pool 212 (j=32).
    report = analyze(vgg16(), (224, 224))
    assert report.receptive_field == (212, 212)
    assert [layer.rf[0] for layer in report.layers if layer.op == "MaxPool2d"] == [6, 16, 44, 100, 212]


def test_alexnet_receptive_field_is_195():
    # conv1 11/4: 11 (j=4); pool 3/2: 11+2*4=19 (j=8); conv2 5: 19+4*8=51; pool: 51+2*8=67 (j=16);
    # conv3..5 3x3: 67+32=99, 131, 163; pool: 163+2*16=195 (j=32).
    report = analyze(AlexNet(), (224, 224))
    assert report.receptive_field == (195, 195)
    by_name = {layer.name: layer for layer in report.layers}
    assert [by_name[name].rf[0] for name in ALEXNET_CONVS] == [11, 51, 99, 131, 163]
    assert by_name["features.12"].jump == (32, 32)
    assert report.border_layer is None and not report.unproductive  # 195 < 224: every layer adds context


def test_resnet50_with_stride_in_the_3x3_conv_is_427():
    # stem 7/2: 7 (j=2); max pool 3/2: 11 (j=4). layer1: three 3x3 at j=4: 11+3*8=35.
    # layer2: 3x3/2 at j=4: 43 (j=8), three more +16: 91. layer3: /2: 107 (j=16), five more +32: 267.
    # layer4: /2: 299 (j=32), two more +64: 427. 1x1 convs and shortcuts add nothing.
    report = analyze(ResNet50(), (224, 224))
    assert report.receptive_field == (427, 427)
    by_name = {layer.name: layer for layer in report.layers}
    assert by_name["layer2.0.conv2"].rf == (43, 43) and by_name["layer3.5.conv3"].rf == (267, 267)
    # At 224, layer3.4.conv2 is the first to see past the input (107+4*32=235 > 224): the border layer.
    assert report.border_layer == "layer3.4.conv2"
    assert not by_name["layer3.4.conv3"].productive and by_name["layer3.4.conv2"].productive
    assert by_name["fc"].is_global and by_name["fc"].productive


def test_alexnet_at_32_has_conv1_and_conv2_productive_and_conv3_to_5_not():
    # Input RFs at 32x32: conv1 1, conv2 19 (<= 32: productive); conv3 67, conv4 99, conv5 131 (> 32).
    report = analyze(AlexNet(), (32, 32))
    productive = {layer.name: layer.productive for layer in report.layers}
    assert [productive[name] for name in ALEXNET_CONVS] == [True, True, False, False, False]
    # conv2's own RF (51) is the first to exceed 32: it is the border layer, the last to add context.
    assert report.border_layer == "features.3"
    # AlexNet cannot even run at 32x32 (the last pool gets a 1x1 map): shapes come from a larger input.
    assert any("cannot run at 32x32" in note for note in report.notes)
